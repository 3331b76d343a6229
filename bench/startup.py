"""
Start-up time against the number of stored uploads.

    python bench/startup.py --uploads 100000 [--tree DIR ...]

Writes N live tus uploads (record + data file) into a fresh storage
directory, starts chunkd on it, and measures from the process's start:
when the port accepts, when the first HEAD is answered 200, and (from the
log) when the background check of every record finished.  With several
--tree options (chunkd source trees, e.g. an older checkout) each is
started on the same directory in turn, so the figures compare side by
side; the default is this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(uploadId: str, now: float) -> dict:
    return {"id": uploadId, "protocol": "tus", "length": 10, "offset": 0, "metadata": {},
            "created": now, "updated": now, "expires": now + 86400, "state": "active",
            "extra": {"tus_metadata": ""}}


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(tree: str, work: str, live: str) -> dict:
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
        conn.sendall(f"HEAD /files/{live} HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(4096)
        firstAnswer = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200"), answer
        conn.close()
        checked = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = open(logPath, errors="replace").read()
            if re.search(r"(checked|loaded) \d+ upload records", text):
                checked = time.monotonic() - started
                break
            time.sleep(0.05)
        lines = [line for line in text.splitlines()
                 if re.search(r"upload records|Site starting|starting on", line)]
        return {"listening": listening, "firstAnswer": firstAnswer, "checked": checked, "log": lines}
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=100000)
    parser.add_argument("--tree", action="append", help="chunkd source tree (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    args = parser.parse_args()
    trees = args.tree or [ROOT]
    work = tempfile.mkdtemp(prefix="chunkd-startup-", dir="/var/tmp")
    try:
        uploads = os.path.join(work, "data", "uploads")
        os.makedirs(uploads)
        now = time.time()
        ids = [secrets.token_hex(16) for _ in range(args.uploads)]
        for uploadId in ids:
            with open(os.path.join(uploads, uploadId + ".json"), "w") as f:
                json.dump(record(uploadId, now), f)
            open(os.path.join(uploads, uploadId + ".data"), "wb").close()
        print(f"{args.uploads} upload records written")
        runs: dict = {tree: [] for tree in trees}
        for round in range(args.rounds):
            for tree in trees:
                figures = measure(tree, work, ids[-1])
                runs[tree].append(figures)
                checked = "-" if figures["checked"] is None else f"{figures['checked']:.2f}s"
                print(f"round {round + 1} {tree}: listening {figures['listening']:.2f}s, "
                      f"first HEAD answered {figures['firstAnswer']:.2f}s, records checked {checked}")
                for line in figures["log"]:
                    print("    " + line)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"uploads": args.uploads, "rounds": args.rounds, "runs": runs}, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
