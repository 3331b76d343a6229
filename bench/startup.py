"""
Start-up time against the number of stored uploads.

    python bench/startup.py --uploads 100000 [--tree DIR ...] [--keep DIR]

Writes N live tus uploads (record + data file) into a storage directory
(in parallel, one writer process per core), starts chunkd on it, and
measures from the process's start: when the port accepts, when the first
HEAD is answered 200, when (from the log) the background check of every
record finished, and when chunkd went quiet after it (its CPU use fell
below 5% for half a second: the janitor's first sweep and anything else
start-up set going are over too).  Meanwhile one HEAD of a random stored upload
every 100 ms on a kept-alive connection gives the latency a client sees
while that work runs (p50/p99/max), and chunkd's peak RSS (VmHWM) is read
once it is quiet.

With several --tree options (chunkd source trees, e.g. an older checkout)
each is started on the same directory in turn, so the figures compare side
by side; the default is this checkout.  --keep DIR keeps the generated
directory (and reuses it on the next run with the same --uploads: writing
a million uploads takes minutes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import cpuSeconds, statusKB  # noqa: E402

#: how long stored records stay live: long enough for a kept directory
EXPIRES_AFTER = 365 * 86400
#: a HEAD sampled this often while start-up work runs
SAMPLE_EVERY = 0.1


def record(uploadId: str, now: float) -> dict:
    return {"id": uploadId, "protocol": "tus", "length": 10, "offset": 0, "metadata": {},
            "created": now, "updated": now, "expires": now + EXPIRES_AFTER, "state": "active",
            "extra": {"tus_metadata": ""}}


def writeSome(uploads: str, ids: List[str], now: float) -> None:
    """Write a batch of uploads (in a pool process)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for uploadId in ids:
        fd = os.open(os.path.join(uploads, uploadId + ".json"), flags, 0o640)
        os.write(fd, json.dumps(record(uploadId, now), sort_keys=True).encode())
        os.close(fd)
        os.close(os.open(os.path.join(uploads, uploadId + ".data"), flags, 0o640))


def prepare(work: str, count: int) -> List[str]:
    """
    The storage directory under C{work} with C{count} live uploads, written
    now or kept from an earlier run; returns their ids.
    """
    idsPath = os.path.join(work, "ids.txt")
    if os.path.exists(idsPath):
        with open(idsPath) as f:
            ids = f.read().split()
        if len(ids) == count:
            print(f"{count} upload records kept from an earlier run in {work}")
            return ids
        shutil.rmtree(os.path.join(work, "data"), ignore_errors=True)
        os.unlink(idsPath)
    uploads = os.path.join(work, "data", "uploads")
    os.makedirs(uploads)
    now = time.time()
    ids = [secrets.token_hex(16) for _ in range(count)]
    started = time.monotonic()
    batch = 5000
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.starmap(writeSome, [(uploads, ids[i:i + batch], now) for i in range(0, count, batch)])
    with open(idsPath + ".tmp", "w") as f:
        f.write("\n".join(ids))
    os.replace(idsPath + ".tmp", idsPath)  # only a complete directory is reused
    print(f"{count} upload records written in {time.monotonic() - started:.1f}s")
    return ids


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def head(conn: socket.socket, uploadId: str) -> bytes:
    conn.sendall(f"HEAD /files/{uploadId} HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        more = conn.recv(4096)
        if not more:
            raise ConnectionError("chunkd closed the connection")
        answer += more
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return answer


def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure(tree: str, work: str, ids: List[str]) -> Dict[str, Any]:
    port = freePort()
    config = os.path.join(work, "chunkd.yaml")
    with open(config, "w") as f:
        f.write(f"listen: 'tcp:port={port}:interface=127.0.0.1'\nstorage:\n  directory: {work}/data\n"
                "janitor:\n  interval: 1h\n")
    logPath = os.path.join(work, "log")
    log = open(logPath, "wb")
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
                               "--config", config], env=dict(os.environ, PYTHONPATH=tree),
                              cwd=tree, stdout=log, stderr=subprocess.STDOUT)  # -m puts the cwd first
    try:
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.005)
        listening = time.monotonic() - started
        head(conn, ids[-1])
        firstAnswer = time.monotonic() - started
        rssAtFirstAnswer = statusKB(server.pid, "VmRSS:") / 1024
        checked: Optional[float] = None
        quiet: Optional[float] = None
        latencies: List[float] = []
        cpu, cpuAt = cpuSeconds([server.pid]), time.monotonic()
        quietSince: Optional[float] = None
        rng = random.Random(1)
        deadline = time.monotonic() + 900
        text = ""
        while time.monotonic() < deadline and (checked is None or quiet is None):
            sent = time.monotonic()
            head(conn, rng.choice(ids))
            latencies.append(time.monotonic() - sent)
            if checked is None:
                text = open(logPath, errors="replace").read()
                if re.search(r"(checked|loaded) \d+ upload records", text):
                    checked = time.monotonic() - started
            now = time.monotonic()
            if checked is None:
                cpu, cpuAt = cpuSeconds([server.pid]), now  # quiet counts from the check's end
            elif now - cpuAt >= 0.5:
                used = cpuSeconds([server.pid])
                busy = (used - cpu) / (now - cpuAt)
                cpu, cpuAt = used, now
                if busy < 0.05:
                    if quietSince is None:
                        quietSince = now - 0.5
                    if now - quietSince >= 0.5:
                        quiet = quietSince - started
                else:
                    quietSince = None
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - sent)))
        conn.close()
        text = open(logPath, errors="replace").read()
        lines = [line for line in text.splitlines()
                 if re.search(r"upload records|Site starting|starting on|janitor|Traceback|Error", line)]
        return {"listening": listening, "firstAnswer": firstAnswer, "checked": checked, "quiet": quiet,
                "rssAtFirstAnswer": rssAtFirstAnswer, "peakRSS": statusKB(server.pid, "VmHWM:") / 1024,
                "heads": len(latencies),
                "headP50": statistics.median(latencies) * 1000 if latencies else None,
                "headP99": percentile(latencies, 99) * 1000 if latencies else None,
                "headMax": max(latencies) * 1000 if latencies else None,
                "log": lines}
    finally:
        server.terminate()
        server.wait()


def seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=100000)
    parser.add_argument("--tree", action="append", help="chunkd source tree (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", default="", help="generate the uploads here and keep them (reused next time)")
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    args = parser.parse_args()
    trees = args.tree or [ROOT]
    if args.keep:
        work = os.path.abspath(args.keep)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="chunkd-startup-", dir="/var/tmp")
    try:
        ids = prepare(work, args.uploads)
        runs: dict = {tree: [] for tree in trees}
        for round in range(args.rounds):
            for tree in trees:
                figures = measure(tree, work, ids)
                runs[tree].append(figures)
                print(f"round {round + 1} {tree}: listening {seconds(figures['listening'])}, "
                      f"first HEAD answered {seconds(figures['firstAnswer'])}, "
                      f"records checked {seconds(figures['checked'])}, quiet {seconds(figures['quiet'])}; "
                      f"RSS {figures['rssAtFirstAnswer']:.0f} MB at the first answer, "
                      f"peak {figures['peakRSS']:.0f} MB; {figures['heads']} HEADs meanwhile: "
                      f"p50 {figures['headP50']:.1f} ms, p99 {figures['headP99']:.1f} ms, "
                      f"max {figures['headMax']:.1f} ms", flush=True)
                for line in figures["log"]:
                    print("    " + line)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"uploads": args.uploads, "rounds": args.rounds, "runs": runs}, f, indent=1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
