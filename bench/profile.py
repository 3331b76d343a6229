"""
Profile chunkd on one benchmark workload: py-spy (where the CPU time goes,
by Python stack, native frames included) or strace -c (system calls per MiB).

    python3 bench/profile.py w1 pyspy     # -> bench/results/profile-w1.svg (+ .txt top frames)
    python3 bench/profile.py w1 strace    # -> bench/results/strace-w1.txt
    python3 bench/profile.py w3 pyspy|strace
    python3 bench/profile.py w5 pyspy|strace
    python3 bench/profile.py w1 time      # just the numbers, no profiler attached

Options: --chunkd REV|worktree|DIR (as for harness.py), --config-extra YAML
(appended to the config, e.g. "disk: {high_water: 16MiB}"), --out NAME.
The profiler slows chunkd down; read its output for shares, not speeds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import GiB, MiB, BENCH, RESULTS, Chunkd, cpuSeconds, loadgen, log, runClient  # noqa: E402


class ProfiledChunkd(Chunkd):
    extra = ""

    def command(self):
        cmd = super().command()
        cfg = cmd[cmd.index("--config") + 1]
        if self.extra:
            with open(cfg, "a") as f:
                f.write(self.extra + "\n")
        return cmd


def collapse(raw: str, top: int = 25, mainOnly: bool = False) -> str:
    """Self and total shares by function from py-spy's collapsed stacks."""
    selfc: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    n = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        if mainOnly and "MainThread" not in stack.split(";")[0]:
            continue
        if mainOnly and stack.split(";")[-1].startswith("epoll_wait"):
            continue  # idle: waiting for the network
        c = int(count)
        n += c
        frames = stack.split(";")
        threads[frames[0]] += c
        leaf = frames[-1]
        selfc[re.sub(r"\s*\(.*?:\d+\)", lambda m: m.group(0).split(":")[0] + ")", leaf)] += c
        seen = set()
        for fr in frames[1:]:
            key = re.sub(r":\d+\)", ")", fr)
            if key not in seen:
                seen.add(key)
                total[key] += c
    out = [f"{n} samples", "", "by thread:"]
    out += [f"  {c / n:6.1%}  {t}" for t, c in threads.most_common()]
    out += ["", "self (leaf function):"]
    out += [f"  {c / n:6.1%}  {f}" for f, c in selfc.most_common(top)]
    out += ["", "total (function on the stack):"]
    out += [f"  {c / n:6.1%}  {f}" for f, c in total.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["w1", "w2", "w3", "w4", "w5"])
    p.add_argument("tool", choices=["pyspy", "strace", "time"])
    p.add_argument("--chunkd", default="HEAD")
    p.add_argument("--config-extra", default="")
    p.add_argument("--out", default="")
    p.add_argument("--workdir", default="/tmp/chunkd-profile")
    p.add_argument("--port", type=int, default=18600)
    p.add_argument("--repeat", type=int, default=1, help="timed repetitions (time tool)")
    a = p.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    h = harness.Harness(argparse.Namespace(
        workdir=a.workdir, quick=False, runs=1, merge=False, results=RESULTS, chunkd=a.chunkd, only=[],
        servers=[]))
    h.chunkdSource()
    src = os.path.join(a.workdir, "source-1.bin")
    if not os.path.exists(src) or os.path.getsize(src) != GiB:
        with open(src, "wb") as f:
            for _ in range(64):
                f.write(os.urandom(16 * MiB))
    s = ProfiledChunkd(a.workdir, a.port)
    s.extra = a.config_extra
    s.start()
    name = a.out or a.workload
    try:
        # warm-up
        path = harness.tusCreate(s, 16 * MiB)
        runClient(["curl", "-sS", "-o", "/dev/null", "-X", "PATCH", "-H", "Tus-Resumable: 1.0.0", "-H",
                   "Upload-Offset: 0", "-H", "Content-Type: application/offset+octet-stream", "-H", "Expect:",
                   "-T", src, "-r", "0-16777215", s.base + path])
        heads = []
        if a.workload == "w5":
            r = runClient(loadgen("concurrent", "--url", s.base + "/files/", "--file", src, "--n", "100",
                                  "--size", "65536"))
            heads = json.loads(r["stdout"])["paths"]
        results = []
        repeat = 2 if a.tool == "pyspy" else a.repeat
        for i in range(repeat):
            if a.workload == "w1":
                path = harness.tusCreate(s, GiB)
                client = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", "-X", "PATCH",
                          "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
                          "-H", "Content-Type: application/offset+octet-stream", "-H", "Expect:",
                          "-T", src, s.base + path]
                mib = 1024
            elif a.workload == "w2":
                client = loadgen("patches", "--url", s.base + "/files/", "--file", src)
                mib = 1024
            elif a.workload == "w3":
                client = loadgen("concurrent", "--url", s.base + "/files/", "--file", src, "--n", "64",
                                 "--size", str(16 * MiB))
                mib = 1024
            elif a.workload == "w4":
                client = loadgen("resumable", "--url", s.base + "/resumable", "--file", src,
                                 "--size", str(256 * MiB), "--filename", f"prof-{time.time_ns()}.bin")
                mib = 256
            else:
                client = loadgen("head", "--url", s.base + "/", "--n", "10000", "--conns", "100",
                                 "--paths", ",".join(heads), "--header", "Tus-Resumable: 1.0.0")
                mib = 0
            harness.settle()
            harness.touchMemory(a.workdir, GiB + GiB // 4)
            pid = s.proc.pid
            prof = None
            if a.tool == "pyspy":
                svg = os.path.join(RESULTS, f"profile-{name}.svg")
                raw = os.path.join(a.workdir, f"profile-{name}.raw")
                # first run: collapsed stacks (for the text summary); second: the flame graph
                fmt, dest = ("raw", raw) if i == 0 else ("flamegraph", svg)
                prof = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--native",
                                         "--threads", "--format", fmt, "-o", dest], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            elif a.tool == "strace":
                stxt = os.path.join(a.workdir, f"strace-{name}.txt")
                prof = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", stxt],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if prof:
                time.sleep(1.0)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            u0, s0 = int(fields[11]), int(fields[12])
            t0 = time.perf_counter()
            r = runClient(client)
            wall = time.perf_counter() - t0
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            u1, s1 = int(fields[11]), int(fields[12])
            tck = os.sysconf("SC_CLK_TCK")
            res = {"wall": wall, "user": (u1 - u0) / tck, "sys": (s1 - s0) / tck, "client": r["stdout"][-300:]}
            results.append(res)
            log(f"{a.workload} run {i + 1}: wall {wall:.2f}s user {res['user']:.2f}s sys {res['sys']:.2f}s "
                f"{(mib * 1.048576 / wall) if mib else 0:.0f} MB/s")
            if prof:
                prof.send_signal(2)
                prof.wait(60)
            # drop what was stored
            for sub in ("uploads", "complete"):
                for dp, _, files in os.walk(os.path.join(s.dir, sub)):
                    for fn in files:
                        if a.workload != "w5" and (fn.endswith(".data") or sub == "complete"):
                            os.unlink(os.path.join(dp, fn))
        if a.tool == "pyspy":
            with open(raw) as f:
                rawtext = f.read()
            with open(os.path.join(RESULTS, f"profile-{name}.txt"), "w") as f:
                f.write(f"py-spy --native at 250 Hz, chunkd {h.chunkdRev}, workload {a.workload}; "
                        f"run: {json.dumps(results)}\n\nALL THREADS\n" + collapse(rawtext)
                        + "\nREACTOR THREAD, BUSY SAMPLES ONLY (epoll_wait left out)\n"
                        + collapse(rawtext, 40, mainOnly=True))
            print(open(os.path.join(RESULTS, f"profile-{name}.txt")).read()[:6000])
        elif a.tool == "strace":
            text = open(stxt).read()
            perMiB = []
            for line in text.splitlines():
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
                if m and mib:
                    perMiB.append(f"  {m.group(2):20s} {int(m.group(1)) / mib:8.2f} per MiB")
                elif m:
                    perMiB.append(f"  {m.group(2):20s} {int(m.group(1)) / 10000:8.2f} per request")
            out = (f"strace -c -f, chunkd {h.chunkdRev}, workload {a.workload}; run: {json.dumps(results)}\n\n"
                   + text + "\n" + "\n".join(perMiB) + "\n")
            with open(os.path.join(RESULTS, f"strace-{name}.txt"), "w") as f:
                f.write(out)
            print(out)
    finally:
        s.stop()


if __name__ == "__main__":
    main()
