"""
Scale-out: aggregate throughput and HEAD rate with 1, 2 and 4 chunkd
processes on one storage directory behind nginx (deploy/nginx-chunkd.conf),
and with 1 and 2 processes accepting on one shared listening socket (as
systemd/chunkd@.service runs them, no proxy), against the same workloads
sent to one process directly.

    python bench/scaleout.py [--rounds 3] [--processes 1,2,4] [--shared 2]

Workloads (bench/loadgen.py): 64 concurrent 16 MiB tus uploads; one 1 GiB
file through Resumable.js in 1 MiB chunks, 8 at a time; 20,000 HEADs over
100 connections.  Configurations alternate round by round; medians are
printed as a Markdown table.  storage.durable is off, as in bench/harness.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(ROOT, "bench", "loadgen.py")
MiB = 1 << 20


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitFor(port: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                raise SystemExit(f"nothing listens on {port}")
            time.sleep(0.02)


class Setup:
    """N chunkd processes on one storage directory, and nginx if asked."""

    def __init__(self, work: str, processes: int, mode: str) -> None:
        self.work = work
        self.storage = os.path.join(work, "storage")
        os.makedirs(self.storage, exist_ok=True)
        self.procs: List[subprocess.Popen] = []
        if mode == "shared":
            self.shareOneSocket(processes)
            return
        nginx = mode == "nginx"
        ports = []
        for n in range(processes):
            port = freePort()
            config = os.path.join(work, f"chunkd-{n}.yaml")
            with open(config, "w") as f:
                f.write(f"listen: 'tcp:port={port}:interface=127.0.0.1'\n"
                        f"storage: {{directory: {self.storage}, durable: false}}\n"
                        "network: {trust_proxy: true}\n")
            process = subprocess.Popen([sys.executable, "-m", "twisted", "chunkd", "--config", config],
                                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            self.procs.append(process)
            waitFor(port, process)
            ports.append(port)
        self.port = ports[0]
        if nginx:
            self.port = freePort()
            prefix = os.path.join(work, "nginx")
            os.makedirs(prefix, exist_ok=True)
            with open(os.path.join(ROOT, "deploy", "nginx-chunkd.conf")) as f:
                site = f.read()
            site = site.replace("# Round robin, no stickiness: @SERVERS@",
                                " ".join(f"server 127.0.0.1:{p};" for p in ports))
            site = site.replace("@LISTEN@", f"127.0.0.1:{self.port}")
            with open(os.path.join(prefix, "chunkd.conf"), "w") as f:
                f.write(site)
            with open(os.path.join(prefix, "nginx.conf"), "w") as f:
                f.write(f"worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\n"
                        f"error_log {prefix}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
                        f"http {{ access_log off; client_body_temp_path {prefix}/body; "
                        f"proxy_temp_path {prefix}/proxy; include {prefix}/chunkd.conf; }}\n")
            nginxProcess = subprocess.Popen(["nginx", "-p", prefix, "-c", f"{prefix}/nginx.conf"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            self.procs.append(nginxProcess)
            waitFor(self.port, nginxProcess)

    def shareOneSocket(self, processes: int) -> None:
        """
        What systemd does for chunkd@.service instances: one listening socket
        (systemd's Backlog=4096), passed to every process as descriptor 3 with
        LISTEN_FDS/LISTEN_PID (see tests/test_socket_activation.py).
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        self.port = listener.getsockname()[1]
        config = os.path.join(self.work, "chunkd.yaml")
        with open(config, "w") as f:
            f.write("listen: 'systemd:domain=INET:index=0'\n"
                    f"storage: {{directory: {self.storage}, durable: false}}\n")
        env = dict(os.environ, PYTHONPATH=ROOT, LISTEN_FDS="1", LISTEN_FDNAMES="chunkd-http")
        env.pop("LISTEN_PID", None)
        for n in range(processes):
            self.procs.append(subprocess.Popen(
                ["sh", "-c", 'LISTEN_PID=$$ exec "$@" 3<&0 0</dev/null', "sh",
                 sys.executable, "-m", "twisted", "chunkd", "--config", config],
                cwd=ROOT, env=env, stdin=listener.fileno(),
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        listener.close()
        # A request waits in the backlog until some process accepts it: ask
        # each process's start-up to finish by waiting a moment, then check
        # one answer.
        time.sleep(3)
        waitFor(self.port, self.procs[0])

    def stop(self) -> None:
        for process in self.procs:
            process.terminate()
        for process in self.procs:
            process.wait(timeout=30)
        shutil.rmtree(self.storage, ignore_errors=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def loadgen(*args: str) -> Dict:
    out = subprocess.run([sys.executable, LOADGEN, *args], capture_output=True, text=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise SystemExit(f"loadgen {args[0]}: {result['error']}")
    return result


def measure(setup: Setup, big: str) -> Tuple[float, float, float]:
    # (each upload i sends bytes i*16 MiB.. of the 1 GiB file)
    many = loadgen("concurrent", "--url", setup.url("/files/"), "--file", big,
                   "--n", "64", "--size", str(16 * MiB))
    one = loadgen("resumable", "--url", setup.url("/resumable"), "--file", big, "--chunk", str(MiB),
                  "--sim", "8", "--filename", f"big-{time.time_ns()}.bin")
    paths = ",".join(many["paths"])
    heads = loadgen("head", "--url", setup.url("/files/"), "--n", "20000", "--conns", "100",
                    "--header", "Tus-Resumable: 1.0.0", "--paths", paths)
    return (many["bytes"] / many["seconds"] / 1e6, one["bytes"] / one["seconds"] / 1e6,
            20000 / heads["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--shared", default="2", help="process counts on one shared socket ('' for none)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="chunkd-scaleout-", dir="/var/tmp")
    try:
        big = os.path.join(work, "source-1g.bin")
        with open(big, "wb") as f:
            for _ in range(64):
                f.write(os.urandom(16 * MiB))
        configs = [("1 process, direct", 1, "direct")] + [
            (f"{n} on one shared socket", n, "shared") for n in map(int, filter(None, args.shared.split(",")))
        ] + [(f"{n} behind nginx", n, "nginx") for n in map(int, filter(None, args.processes.split(",")))]
        results: Dict[str, List[Tuple[float, float, float]]] = {name: [] for name, _, _ in configs}
        for round in range(args.rounds):
            for name, processes, mode in configs:
                setup = Setup(os.path.join(work, "run"), processes, mode)
                try:
                    figures = measure(setup, big)
                finally:
                    setup.stop()
                    shutil.rmtree(os.path.join(work, "run"), ignore_errors=True)
                results[name].append(figures)
                print(f"round {round + 1} {name}: 64x16MiB {figures[0]:.0f} MB/s, "
                      f"resumable 1GiB {figures[1]:.0f} MB/s, HEAD {figures[2]:.0f}/s", flush=True)
        print(f"\n{os.cpu_count()} cores; medians of {args.rounds} rounds\n")
        print("| setup | 64 x 16 MiB tus, MB/s | 1 GiB Resumable.js (8 at a time), MB/s | HEADs/s (100 conns) |")
        print("|---|---|---|---|")
        for name, _, _ in configs:
            rows = results[name]
            print(f"| {name} | " + " | ".join(f"{statistics.median(r[i] for r in rows):.0f}" for i in range(3))
                  + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
