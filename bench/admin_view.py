"""
Does watching the operator's live view slow uploads?

    python bench/admin_view.py --rounds 3

Starts one chunkd process, then alternates rounds of 64 concurrent tus
uploads of 16 MiB each (bench/loadgen.py concurrent) without and with a
client polling the admin JSON API (GET /_admin/api/status) every 0.5 s
over keep-alive, as the page would -- alternated so that drift of the
machine (page cache, other load) falls on both alike.  Prints each round's
throughput and the ratio of the medians (with / without) as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Watcher(threading.Thread):
    """Polls the admin API every C{interval} seconds until stopped."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stopping = threading.Event()
        self.polls = 0
        self.streamingSeen = 0
        self.latencies: list = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stopping.is_set():
            t0 = time.perf_counter()
            conn.request("GET", "/_admin/api/status")
            response = conn.getresponse()
            body = response.read()
            self.latencies.append(time.perf_counter() - t0)
            assert response.status == 200, body
            self.polls += 1
            self.streamingSeen = max(self.streamingSeen, len(json.loads(body)["inProgress"]))
            self.stopping.wait(self.interval)
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="pairs of rounds (without, with)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=16 << 20)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--durable", action="store_true", help="fdatasync as in production")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="chunkd-bench-admin-")
    source = os.path.join(work, "source")
    with open(source, "wb") as f:  # upload i sends bytes [i*size, (i+1)*size)
        block = os.urandom(args.size)
        for _ in range(args.n):
            f.write(block)
    port = freePort()
    storage = os.path.join(work, "data")
    config = os.path.join(work, "chunkd.yaml")
    with open(config, "w") as f:
        json.dump({"listen": [f"tcp:port={port}:interface=127.0.0.1"],
                   "storage": {"directory": storage, "durable": args.durable},
                   "network": {"max_connections_per_client": 0, "idle_timeout": "600s"},
                   "tus": {"relative_location": True}}, f)
    log = open(os.path.join(work, "log"), "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "twisted", "chunkd", "--config", config],
                              env=dict(os.environ, PYTHONPATH=ROOT), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("chunkd did not start")
                time.sleep(0.1)
        results: dict = {"without": [], "with": []}
        watchers = []
        for _ in range(args.rounds):
            for kind in ("without", "with"):
                watcher = Watcher(port, args.interval) if kind == "with" else None
                if watcher is not None:
                    watcher.start()
                out = subprocess.run(
                    [sys.executable, os.path.join(ROOT, "bench", "loadgen.py"), "concurrent",
                     "--url", f"http://127.0.0.1:{port}/files/", "--file", source,
                     "--n", str(args.n), "--size", str(args.size)],
                    capture_output=True, text=True).stdout
                if watcher is not None:
                    watcher.stopping.set()
                    watcher.join()
                    watchers.append(watcher)
                run = json.loads(out)
                if "error" in run:
                    raise SystemExit(run["error"])
                results[kind].append(run["bytes"] / run["seconds"] / 1e6)
                # Room for the next round: the finished uploads' data goes.
                for name in os.listdir(os.path.join(storage, "uploads")):
                    if name.endswith(".data"):
                        os.unlink(os.path.join(storage, "uploads", name))
        median = {k: statistics.median(v) for k, v in results.items()}
        polls = [l for w in watchers for l in w.latencies]
        print(json.dumps({
            "uploads": f"{args.n} x {args.size >> 20} MiB tus, durable={args.durable}",
            "MBps_without": [round(x) for x in results["without"]],
            "MBps_with": [round(x) for x in results["with"]],
            "median_without": round(median["without"]), "median_with": round(median["with"]),
            "ratio_with_over_without": round(median["with"] / median["without"], 3),
            "polls": len(polls), "most_streaming_seen": max(w.streamingSeen for w in watchers),
            "poll_ms_median": round(1000 * statistics.median(polls), 2),
            "poll_ms_max": round(1000 * max(polls), 2),
        }, indent=1))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
