"""
W6: many tus uploads at once, and chunkd's memory while they stream.

    python bench/many_uploads.py [--n 1000] [--size 2MiB] [--budgets 256MiB,0] [--rounds 2]
                                 [--slow-disk [100MB]] [--json FILE]

For each `disk.max_buffered` in --budgets (0: no budget), alternating round
by round: start chunkd (durable storage, its default) on a free loopback
port with limits that admit --n connections from one client, send --n tus
uploads of --size bytes at once (bench/loadgen.py: one connection each,
POST then one PATCH, bodies by sendfile from one source file), sample the
server's VmRSS every 50 ms, then check every stored upload byte for byte
against its slice of the source.  Prints one line per run and a Markdown
table of medians.  --slow-disk throttles chunkd's writes to its disk (a
blkio cgroup), so its disk pool falls behind as on a slow volume.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import RSSSampler, statusKB, waitPort  # noqa: E402
from chunkd.config import parseSize  # noqa: E402

LOADGEN = os.path.join(ROOT, "bench", "loadgen.py")
MiB = 1024 * 1024


def moreFiles() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def wholeDisk(path: str) -> str:
    """The "major:minor" of the block device holding C{path} (the whole disk, not a partition)."""
    dev = os.stat(path).st_dev
    sysfs = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if os.path.exists(os.path.join(sysfs, "partition")):
        sysfs = os.path.dirname(sysfs)
    with open(os.path.join(sysfs, "dev")) as f:
        return f.read().strip()


class SlowDisk:
    """
    A disk made slow for one process tree: a blkio cgroup (v1) whose
    writes to the storage's disk are throttled to C{bps} bytes a second.
    The throttle applies to the writes chunkd's own threads submit --
    fdatasync's, as durable storage makes them -- so its disk pool backs
    up behind a disk that cannot keep up, as on a slow or busy volume.
    """

    def __init__(self, storage: str, bps: int) -> None:
        root = "/sys/fs/cgroup/blkio"
        if not os.path.exists(os.path.join(root, "blkio.throttle.write_bps_device")):
            raise SystemExit("--slow-disk needs the cgroup v1 blkio controller at /sys/fs/cgroup/blkio (and root)")
        self.path = os.path.join(root, f"chunkd-slow-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "blkio.throttle.write_bps_device"), "w") as f:
            f.write(f"{wholeDisk(storage)} {bps}\n")

    def enter(self) -> None:
        """In the child, before exec: join the throttled group."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def run(work: str, source: str, n: int, size: int, budget: int,
        slowBps: int = 0) -> Dict[str, float]:
    storage = os.path.join(work, "storage")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = os.path.join(work, "chunkd.yaml")
    with open(config, "w") as f:
        f.write(f"listen: 'tcp:port={port}:interface=127.0.0.1'\n"
                f"storage: {{directory: {storage}}}\n"
                f"disk: {{max_buffered: {budget}}}\n"
                f"network: {{max_connections: {n + 100}, max_connections_per_client: {n + 100}}}\n")
    os.makedirs(storage, exist_ok=True)
    slow = SlowDisk(storage, slowBps) if slowBps else None

    def prepare() -> None:
        moreFiles()
        if slow is not None:
            slow.enter()

    server = subprocess.Popen([sys.executable, "-m", "twisted", "chunkd", "--config", config],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), preexec_fn=prepare,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        waitPort(port, server)
        idle = statusKB(server.pid, "VmRSS:") * 1024
        sampler = RSSSampler([server.pid], interval=0.05)
        sampler.start()
        out = subprocess.run([sys.executable, LOADGEN, "concurrent", "--url", f"http://127.0.0.1:{port}/files/",
                              "--file", source, "--n", str(n), "--size", str(size)],
                             capture_output=True, text=True, timeout=1800, preexec_fn=moreFiles)
        peak = sampler.stop() * 1024
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if "error" in result:
            raise SystemExit(f"loadgen: {result['error']}")
        exact = 0
        with open(source, "rb") as src:
            for i, path in enumerate(result["paths"]):
                src.seek(i * size)
                expected = src.read(size)
                with open(os.path.join(storage, "uploads", path.rsplit("/", 1)[1] + ".data"), "rb") as f:
                    exact += f.read() == expected
        return {"idle": idle / MiB, "peak": peak / MiB, "seconds": result["seconds"],
                "mbps": result["bytes"] / result["seconds"] / 1e6, "exact": exact}
    finally:
        server.terminate()
        server.wait(timeout=60)
        if slow is not None:
            slow.remove()
        shutil.rmtree(storage, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", default="2MiB")
    parser.add_argument("--budgets", default="256MiB,0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    parser.add_argument("--slow-disk", nargs="?", const="100MB", default="",
                        help="throttle chunkd's writes to the storage's disk to this many bytes a second "
                             "(default 100MB; cgroup v1 blkio, root)")
    args = parser.parse_args()
    size = parseSize(args.size)
    budgets = [parseSize(b) for b in args.budgets.split(",")]
    slowBps = parseSize(args.slow_disk) if args.slow_disk else 0
    work = tempfile.mkdtemp(prefix="chunkd-many-", dir="/var/tmp")
    try:
        source = os.path.join(work, "source.bin")
        with open(source, "wb") as f:
            for _ in range(args.n):
                f.write(os.urandom(size))
        results: Dict[int, List[Dict[str, float]]] = {b: [] for b in budgets}
        for round in range(args.rounds):
            for budget in budgets:
                figures = run(work, source, args.n, size, budget, slowBps)
                results[budget].append(figures)
                print(f"round {round + 1} max_buffered {budget / MiB:.0f} MiB: peak RSS {figures['peak']:.0f} MiB "
                      f"(idle {figures['idle']:.0f}), {figures['mbps']:.0f} MB/s, "
                      f"{figures['exact']:.0f}/{args.n} byte-exact", flush=True)
        slowNote = f"; disk throttled to {slowBps / 1e6:g} MB/s" if slowBps else ""
        print(f"\n{args.n} tus uploads of {size / MiB:g} MiB at once, durable{slowNote}; {os.cpu_count()} cores; "
              f"medians of {args.rounds} rounds\n")
        print("| disk.max_buffered | peak RSS, MiB | idle RSS, MiB | MB/s | byte-exact |")
        print("|---|---|---|---|---|")
        for budget in budgets:
            rows = results[budget]
            print(f"| {'none' if not budget else f'{budget / MiB:.0f} MiB'} | "
                  f"{statistics.median(r['peak'] for r in rows):.0f} | {statistics.median(r['idle'] for r in rows):.0f} | "
                  f"{statistics.median(r['mbps'] for r in rows):.0f} | "
                  f"{min(r['exact'] for r in rows):.0f}/{args.n} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"n": args.n, "size": size, "rounds": args.rounds, "slow_disk_bps": slowBps,
                           "runs": {str(b): rows for b, rows in results.items()}}, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
