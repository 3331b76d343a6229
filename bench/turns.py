"""
W8's profile: how long chunkd's reactor turns take while uploads stream,
beside the HEAD latency a client sees meanwhile.

    python bench/turns.py [--streams 16] [--size 64MiB] [--duration 5] [--rounds 3]
                          [--config-extra 'disk: {read_size: 128KiB}']

Starts chunkd (durable, its default) from this checkout through a small
wrapper that times every reactor turn in which something happened (each
`doIteration` that handled at least one event, from the moment its epoll
wait returned: the handling, not the wait) and writes the durations when
chunkd stops; creates a finished 64 KiB upload; runs
`loadgen.py headload` (--streams uploads streaming, HEADs about the
finished upload from a process of its own, 4 connections, 10 ms apart);
prints, per round, the HEADs' p50/p99/max, the uploads' MB/s, and the
turns' p50/p90/p99/max and events per turn.  A HEAD waits for the turn
under way to end, and its answer goes out in the next: turns are chunkd's
share of a HEAD's latency; the rest is the client's and the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from types import SimpleNamespace
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import tusFinished, waitPort  # noqa: E402
from chunkd.config import parseSize  # noqa: E402

LOADGEN = os.path.join(ROOT, "bench", "loadgen.py")

#: run as chunkd's main module: times the reactor's turns, then runs twistd
WRAPPER = r'''
import json, sys, time
from twisted.internet import epollreactor

out = sys.argv.pop(1)
turns = []
events = [0]
polled = [0.0]
R = epollreactor.EPollReactor
poll, handle = R.doPoll, R._doReadOrWrite


class Poller:
    """The reactor's epoll object, noting when each wait returned."""

    def __init__(self, epoll):
        self.epoll = epoll

    def poll(self, *args):
        try:
            return self.epoll.poll(*args)
        finally:
            polled[0] = time.perf_counter()

    def __getattr__(self, name):
        return getattr(self.epoll, name)


def doPoll(self, timeout):
    if not isinstance(self._poller, Poller):
        self._poller = Poller(self._poller)
    before = events[0]
    poll(self, timeout)
    if events[0] != before:  # the time spent handling events, not waiting for them
        turns.append((time.perf_counter() - polled[0], events[0] - before))

def doReadOrWrite(self, selectable, fd, event):
    events[0] += 1
    return handle(self, selectable, fd, event)

R.doPoll = R.doIteration = doPoll
R._doReadOrWrite = doReadOrWrite
from twisted.internet import reactor

def dump():
    with open(out, "w") as f:
        json.dump(turns, f)

reactor.addSystemEventTrigger("before", "shutdown", dump)
import runpy
sys.argv[0] = "twist"
runpy.run_module("twisted", run_name="__main__", alter_sys=True)
'''


def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def run(work: str, source: str, args: argparse.Namespace, size: int) -> Dict[str, float]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = os.path.join(work, "storage")
    config = os.path.join(work, "chunkd.yaml")
    with open(config, "w") as f:
        f.write(f"listen: 'tcp:port={port}:interface=127.0.0.1'\nstorage: {{directory: {storage}}}\n"
                + (args.config_extra + "\n" if args.config_extra else ""))
    wrapper = os.path.join(work, "turns_wrapper.py")
    with open(wrapper, "w") as f:
        f.write(WRAPPER)
    out = os.path.join(work, "turns.json")
    server = subprocess.Popen([sys.executable, wrapper, out, "chunkd", "--config", config],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        waitPort(port, server)
        target = tusFinished(SimpleNamespace(name="chunkd", port=port), source, 65536, "h.bin")
        done = subprocess.run([sys.executable, LOADGEN, "headload", "--url", f"http://127.0.0.1:{port}/files/",
                               "--file", source, "--streams", str(args.streams), "--size", str(size),
                               "--duration", str(args.duration), "--head-path", target,
                               "--head-length", "65536"], capture_output=True, text=True, timeout=600)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if "error" in result:
            raise SystemExit(f"loadgen: {result['error']}")
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(storage, ignore_errors=True)
    with open(out) as f:
        turns = json.load(f)
    busy = [t for t, _ in turns]
    head = result["head"]
    return {"head_p50": head["lat_p50_ms"], "head_p99": head["lat_p99_ms"], "head_max": head["lat_max_ms"],
            "mbps": result["bytes"] / result["seconds"] / 1e6, "turns": len(busy),
            "turn_p50": percentile(busy, 0.5) * 1000, "turn_p90": percentile(busy, 0.9) * 1000,
            "turn_p99": percentile(busy, 0.99) * 1000, "turn_max": max(busy) * 1000,
            "events_p50": percentile([n for _, n in turns], 0.5)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config-extra", default="", help="YAML appended to chunkd's config")
    args = parser.parse_args()
    size = parseSize(args.size)
    work = tempfile.mkdtemp(prefix="chunkd-turns-", dir="/var/tmp")
    try:
        source = os.path.join(work, "source.bin")
        with open(source, "wb") as f:
            for _ in range(args.streams):
                f.write(os.urandom(size))
        rows = []
        for round in range(args.rounds):
            r = run(work, source, args, size)
            rows.append(r)
            print(f"round {round + 1}: HEAD p50 {r['head_p50']:.1f} / p99 {r['head_p99']:.1f} / max "
                  f"{r['head_max']:.1f} ms; uploads {r['mbps']:.0f} MB/s; {r['turns']} busy turns: p50 "
                  f"{r['turn_p50']:.2f} / p90 {r['turn_p90']:.2f} / p99 {r['turn_p99']:.2f} / max "
                  f"{r['turn_max']:.1f} ms, {r['events_p50']} events per turn (median)", flush=True)
        print(f"\nmedians of {args.rounds}: HEAD p99 {statistics.median(r['head_p99'] for r in rows):.1f} ms, "
              f"turn p99 {statistics.median(r['turn_p99'] for r in rows):.2f} ms, "
              f"{statistics.median(r['mbps'] for r in rows):.0f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
