"""
The janitor against many expired uploads, while clients keep asking.

    python bench/janitor_sweep.py --uploads 100000

Writes N expired tus uploads (record + empty data file) straight into a
fresh storage directory plus one live upload, starts chunkd on it (the
janitor sweeps at start), and sends HEAD requests for the live upload one
after the other on one connection for the whole sweep.  Prints the sweep's
duration (from the daemon's log), the HEAD latencies (median, p99, max:
the max bounds the longest reactor stall a client saw), and checks that
every expired upload became a tombstone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(uploadId: str, expires: float) -> dict:
    return {"id": uploadId, "protocol": "tus", "length": 10, "offset": 0, "metadata": {},
            "created": expires - 86400, "updated": expires - 86400, "expires": expires,
            "state": "active", "extra": {"tus_metadata": ""}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=100000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="chunkd-janitor-", dir="/var/tmp")
    try:
        uploads = os.path.join(work, "data", "uploads")
        os.makedirs(uploads)
        past = time.time() - 3600
        for _ in range(args.uploads):
            uploadId = secrets.token_hex(16)
            with open(os.path.join(uploads, uploadId + ".json"), "w") as f:
                json.dump(record(uploadId, past), f)
            open(os.path.join(uploads, uploadId + ".data"), "wb").close()
        live = secrets.token_hex(16)
        with open(os.path.join(uploads, live + ".json"), "w") as f:
            json.dump(record(live, time.time() + 86400), f)
        open(os.path.join(uploads, live + ".data"), "wb").close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = os.path.join(work, "chunkd.yaml")
        with open(config, "w") as f:
            f.write(f"listen: 'tcp:port={port}:interface=127.0.0.1'\nstorage:\n  directory: {work}/data\n"
                    "janitor:\n  interval: 1h\n")
        log = open(os.path.join(work, "log"), "wb")
        started = time.monotonic()
        server = subprocess.Popen([sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
                                   "--config", config], env=dict(os.environ, PYTHONPATH=ROOT),
                                  stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.01)
        print(f"listening after {time.monotonic() - started:.2f}s (start-up reconciliation included)")
        request = (f"HEAD /files/{live} HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\n\r\n").encode()
        latencies = []
        logPath = os.path.join(work, "log")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            conn.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += conn.recv(4096)
            latencies.append(time.monotonic() - t0)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            if len(latencies) % 200 == 0 and "janitor:" in open(logPath, errors="replace").read():
                break
        conn.close()
        server.terminate()
        server.wait()
        text = open(logPath, errors="replace").read()
        sweep = re.search(r"janitor: (\d+) expired.* in ([\d.]+)s", text)
        states = {}
        for name in os.listdir(uploads):
            if name.endswith(".json"):
                with open(os.path.join(uploads, name)) as f:
                    state = json.load(f)["state"]
                states[state] = states.get(state, 0) + 1
        latencies.sort()
        ms = lambda x: f"{x * 1000:.1f} ms"
        print(f"sweep: {sweep.group(1) if sweep else '?'} expired in {sweep.group(2) if sweep else '?'} s")
        print(f"record states after: {states}")
        print(f"{len(latencies)} HEADs during the sweep: median {ms(statistics.median(latencies))}, "
              f"p99 {ms(latencies[int(len(latencies) * 0.99)])}, max {ms(latencies[-1])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
