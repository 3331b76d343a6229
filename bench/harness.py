"""
chunkd benchmark harness: runs the workloads of issue 6 against chunkd and
its peers, alternating servers run by run, checks every stored file's
sha256, and writes bench/results/results.{json,md,png}.

Run it through bench/run.sh (which installs the peers first); see
bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
GiB = 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- process measurements ------------------------------------------------------


def children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def tree(pid: int) -> List[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


def cpuSeconds(pids: List[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # after ')': state is field 3; utime=14, stime=15 (1-based) -> index 11, 12
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / CLK_TCK


def statusKB(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RSSSampler(threading.Thread):
    """Samples the summed VmRSS of a process tree every 10 ms."""

    def __init__(self, pids: List[int], interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.peakKB = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = sum(statusKB(p, "VmRSS:") for p in self.pids)
            self.peakKB = max(self.peakKB, rss)
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        rss = sum(statusKB(p, "VmRSS:") for p in self.pids)
        self.peakKB = max(self.peakKB, rss)
        return self.peakKB


def systemBusy() -> float:
    """CPU seconds all CPUs have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / CLK_TCK


def waitQuiet(limit: float, maxWait: float) -> float:
    """
    Other work on this machine (other people's tests) skews a run: wait, up
    to C{maxWait} seconds, until the machine is busy less than C{limit} CPUs
    over half a second.  Returns how long it waited.
    """
    t0 = time.time()
    while True:
        b0 = systemBusy()
        time.sleep(0.5)
        if (systemBusy() - b0) / 0.5 < limit or time.time() - t0 > maxWait:
            return time.time() - t0


def runClient(cmd: List[str], timeout: float = 600) -> Dict[str, Any]:
    """Run a client process; return its stdout, exit code and CPU seconds."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=BENCH)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    return {
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
        "rc": p.returncode,
        "wall": time.perf_counter() - t0,
        "cpu": ru.ru_utime + ru.ru_stime,
    }


def sha256File(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256Range(path: str, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            b = f.read(min(left, 8 * MiB))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def touchMemory(workdir: str, size: int) -> None:
    """
    Write and delete a scratch file larger than the upload, so page-cache
    pages the VM handed back to its host are faulted in again before the
    timed run, for every server alike (see design.md, "Benchmarks").
    """
    path = os.path.join(workdir, "scratch.touch")
    block = b"\xa5" * (8 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
    finally:
        os.close(fd)
        os.unlink(path)


def settle() -> None:
    subprocess.run(["sync"])
    time.sleep(1)


def waitPort(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


# -- servers -------------------------------------------------------------------


class Server:
    name = "?"
    port = 0

    def __init__(self, workdir: str, port: int) -> None:
        self.port = port
        self.dir = os.path.join(workdir, self.name)
        self.proc: Optional[subprocess.Popen] = None
        self.logPath = os.path.join(workdir, f"{self.name}.log")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> List[str]:
        raise NotImplementedError

    def env(self) -> Dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)

    def start(self) -> None:
        self.prepare()
        logf = open(self.logPath, "ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=logf, stderr=subprocess.STDOUT, env=self.env(), cwd=BENCH,
            start_new_session=True,
        )
        waitPort(self.port, self.proc)
        time.sleep(0.3)  # let worker processes (nginx) come up

    def pids(self) -> List[int]:
        assert self.proc is not None
        return tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # where a tus upload's bytes are, given its URL path
    def tusDataPath(self, urlPath: str) -> str:
        raise NotImplementedError


class Chunkd(Server):
    name = "chunkd"
    durable = False

    def command(self) -> List[str]:
        cfg = os.path.join(os.path.dirname(self.dir), f"{self.name}.yaml")
        with open(cfg, "w") as f:
            f.write(
                "storage:\n"
                f"  durable: {'true' if self.durable else 'false'}\n"
                "network:\n"
                "  idle_timeout: 600s\n"
                "tus:\n"
                "  relative_location: true\n"
            )
        return [
            sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
            "--listen", f"tcp:port={self.port}:interface=127.0.0.1",
            "--storage", self.dir, "--config", cfg,
        ]

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.environ.get("CHUNKD_PYTHONPATH", ROOT)
        return env

    def tusDataPath(self, urlPath: str) -> str:
        return os.path.join(self.dir, "uploads", urlPath.rstrip("/").rsplit("/", 1)[1] + ".data")

    def completedFile(self, filename: str) -> Optional[str]:
        # chunkd publishes a finished upload as complete/<upload id> with a
        # JSON sidecar naming the original file; each run starts with an
        # empty area, so the one data file there is this run's.
        d = os.path.join(self.dir, "complete")
        if not os.path.isdir(d):
            return None
        for n in os.listdir(d):
            if n.endswith(".json") or n.startswith("."):
                continue
            return os.path.join(d, n)
        return None

    def resumableAvailable(self) -> bool:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("POST", "/resumable", body=b"--x--\r\n",
                  headers={"Content-Type": "multipart/form-data; boundary=x"})
        status = c.getresponse().status
        c.close()
        return status not in (404, 405)


class ChunkdExperiment(Chunkd):
    """
    An experimental chunkd tree (--experiment DIR), with environment knobs
    (--experiment-env K=V,...), run beside the committed one.
    """

    name = "chunkd-exp"
    tree = ""
    extraEnv: Dict[str, str] = {}

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = self.tree
        env.update(self.extraEnv)
        return env


class ChunkdDurable(Chunkd):
    name = "chunkd-durable"
    durable = True


class TusNode(Server):
    name = "tus-node"

    def command(self) -> List[str]:
        return ["node", os.path.join(BENCH, "peers", "tus-server.mjs"), str(self.port), self.dir]

    def tusDataPath(self, urlPath: str) -> str:
        return os.path.join(self.dir, urlPath.rstrip("/").rsplit("/", 1)[1])


class Express(Server):
    name = "express-multer"

    def command(self) -> List[str]:
        return ["node", os.path.join(BENCH, "peers", "resumable-express.js"), str(self.port), self.dir]

    def completedFile(self, filename: str) -> Optional[str]:
        p = os.path.join(self.dir, "complete", filename)
        return p if os.path.exists(p) else None


class Nginx(Server):
    name = "nginx"

    def prepare(self) -> None:
        super().prepare()
        for d in ("root/up", "root/static", "body_temp", "logs", "tmp"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        d = self.dir
        bodyBuffer = os.environ.get("NGINX_BODY_BUFFER", "1m")
        conf = f"""
daemon off;
master_process on;
user root;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    client_max_body_size 0;
    client_body_buffer_size {bodyBuffer};
    # the request body is spooled here, then renamed into place: same file system
    client_body_temp_path {d}/body_temp;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {d}/root;
        location /up/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
        }}
        location /static/ {{ }}
    }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)

    def command(self) -> List[str]:
        return ["nginx", "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf")]

    def putPath(self, urlPath: str) -> str:
        return os.path.join(self.dir, "root", urlPath.lstrip("/"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        super().stop()


TUSPY_VENV = os.environ.get("TUSPY_VENV", os.path.join(BENCH, ".venv-tuspy"))


class Tuspy(Server):
    """
    tuspyserver (PyPI), the tus server a FastAPI user would pick: its router
    in a FastAPI app as its README sets it up (bench/peers/tuspyserver_app.py),
    under uvicorn, one process, from its own virtualenv (bench/run.sh makes
    it).  uvicorn's defaults otherwise, access log included, as a new user
    runs it; TUSPY_UVICORN_ARGS adds options (e.g. --no-access-log).
    """

    name = "tuspy"
    extraEnv: Dict[str, str] = {}

    @staticmethod
    def python() -> str:
        return os.path.join(TUSPY_VENV, "bin", "python")

    @classmethod
    def missing(cls) -> Optional[str]:
        if not os.access(cls.python(), os.X_OK):
            return f"no tuspyserver virtualenv at {TUSPY_VENV} (bench/run.sh makes it)"
        return None

    def command(self) -> List[str]:
        return [
            self.python(), "-m", "uvicorn", "tuspyserver_app:app", "--app-dir", os.path.join(BENCH, "peers"),
            "--host", "127.0.0.1", "--port", str(self.port), *os.environ.get("TUSPY_UVICORN_ARGS", "").split(),
        ]

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHUNKD_PYTHONPATH")}
        env["TUSPY_FILES_DIR"] = self.dir
        env.update(self.extraEnv)
        return env

    def tusDataPath(self, urlPath: str) -> str:
        # tuspyserver keeps an upload's bytes in <files_dir>/<id>, its record in <id>.info
        return os.path.join(self.dir, urlPath.rstrip("/").rsplit("/", 1)[1])


class TuspyMalloc(Tuspy):
    """
    tuspyserver at its best: with the glibc malloc thresholds chunkd sets for
    itself with mallopt() (chunkd/services.py tuneMalloc: M_TRIM_THRESHOLD
    64 MiB, M_MMAP_THRESHOLD 4 MiB), given here through glibc's environment
    variables, so it does not pay a brk round trip per body read either.
    """

    name = "tuspy-malloc"
    extraEnv = {"MALLOC_TRIM_THRESHOLD_": str(64 * MiB), "MALLOC_MMAP_THRESHOLD_": str(4 * MiB)}


SERVER_CLASSES = {c.name: c for c in (Chunkd, ChunkdDurable, ChunkdExperiment, TusNode, Nginx, Express,
                                      Tuspy, TuspyMalloc)}
TUS_PEERS = ["tus-node", "tuspy", "tuspy-malloc"]


# -- tus helpers -----------------------------------------------------------------


def tusMetadata(filename: str) -> str:
    """
    Upload-Metadata with a filename and a filetype, as tus clients send
    (tus-js-client, Uppy): tuspyserver answers a HEAD 400 for an upload
    created without both, so every server gets them (loadgen.py too).
    """
    b64 = lambda v: base64.b64encode(v.encode()).decode("ascii")  # noqa: E731
    return f"filename {b64(filename)},filetype {b64('application/octet-stream')}"


def tusCreate(server: Server, length: int, filename: str = "bench.bin") -> str:
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    c.request("POST", "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(length),
                                          "Upload-Metadata": tusMetadata(filename)})
    r = c.getresponse()
    r.read()
    c.close()
    if r.status != 201:
        raise RuntimeError(f"{server.name}: creation answered {r.status}")
    return urlsplit(r.getheader("Location")).path


def tusFinished(server: Server, source: str, length: int, filename: str) -> str:
    """A finished tus upload of the first C{length} bytes of C{source}: its path."""
    path = tusCreate(server, length, filename)
    with open(source, "rb") as f:
        body = f.read(length)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    c.request("PATCH", path, body=body, headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    r = c.getresponse()
    r.read()
    c.close()
    if r.status != 204:
        raise RuntimeError(f"{server.name}: PATCH of {path} answered {r.status}")
    return path


def tusDelete(server: Server, path: str) -> None:
    if isinstance(server, Nginx):
        return
    try:
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        c.request("DELETE", path, headers={"Tus-Resumable": "1.0.0"})
        c.getresponse().read()
        c.close()
    except OSError:
        pass


# -- workloads -------------------------------------------------------------------


class Workload:
    key = "w?"
    title = "?"
    servers: List[str] = []
    headline = ("mbps", "MB/s")  # metric shown first, higher is better
    touch = GiB

    def __init__(self, h: "Harness") -> None:
        self.h = h

    def describe(self) -> str:
        return self.title

    def setup(self, server: Server) -> Any:
        """Untimed per-run preparation; returns state for run()."""
        return None

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        """None if every stored file is right, else what is wrong."""
        return None

    def cleanup(self, server: Server, state: Any, result: Dict[str, Any]) -> None:
        pass

    def warmup(self, server: Server) -> None:
        pass


def mib(n: int) -> str:
    return f"{n >> 30} GiB" if n >= GiB and n % GiB == 0 else f"{n >> 20} MiB"


def loadgen(*args: str) -> List[str]:
    return [sys.executable, os.path.join(BENCH, "loadgen.py"), *args]


def parseClient(r: Dict[str, Any], who: str) -> Dict[str, Any]:
    try:
        out = json.loads(r["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"{who}: client printed no result (rc {r['rc']}): {r['stderr'][-500:]}")
    if r["rc"] != 0 or "error" in out:
        raise RuntimeError(f"{who}: client failed: {out.get('error')} {r['stderr'][-300:]}")
    return out


class W1SinglePatch(Workload):
    key = "w1"
    title = "1 GiB in one request (curl -T)"
    servers = ["chunkd", "chunkd-durable", "tus-node", "tuspy", "tuspy-malloc", "nginx"]

    def describe(self) -> str:
        return f"{mib(self.h.size1)} in one request (curl -T)"

    def setup(self, server: Server) -> Any:
        if isinstance(server, Nginx):
            return {"path": f"/up/w1-{time.time_ns()}.bin"}
        return {"path": tusCreate(server, self.h.size1)}

    def curl(self, server: Server, path: str) -> List[str]:
        cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_upload}",
               "-H", "Expect:", "-T", self.h.src1]
        if not isinstance(server, Nginx):
            cmd += ["-X", "PATCH", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
                    "-H", "Content-Type: application/offset+octet-stream"]
        return cmd + [server.base + path]

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        r = runClient(self.curl(server, state["path"]))
        code, seconds, sent = r["stdout"].split()
        if code not in ("200", "201", "204") or r["rc"] != 0:
            raise RuntimeError(f"{server.name}: curl answered {code} rc {r['rc']} {r['stderr'][-300:]}")
        seconds = float(seconds)
        return {"seconds": seconds, "mbps": self.h.size1 / seconds / 1e6, "client_cpu": r["cpu"]}

    def dataPath(self, server: Server, state: Any) -> str:
        if isinstance(server, Nginx):
            return server.putPath(state["path"])
        return server.tusDataPath(state["path"])

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        p = self.dataPath(server, state)
        if not os.path.exists(p):
            return f"no stored file at {p}"
        if sha256File(p) != self.h.sha1:
            return "sha256 of the stored file differs from the source"
        return None

    def cleanup(self, server: Server, state: Any, result: Dict[str, Any]) -> None:
        try:
            os.unlink(self.dataPath(server, state))
        except FileNotFoundError:
            pass
        tusDelete(server, state["path"])

    def warmup(self, server: Server) -> None:
        # one small upload: imports, JIT and connection set-up out of the way
        path = f"/up/warm-{time.time_ns()}.bin" if isinstance(server, Nginx) else tusCreate(server, 16 * MiB)
        cmd = ["curl", "-sS", "-o", "/dev/null", "-H", "Expect:", "-T", self.h.srcWarm]
        if not isinstance(server, Nginx):
            cmd += ["-X", "PATCH", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
                    "-H", "Content-Type: application/offset+octet-stream"]
        runClient(cmd + [server.base + path])
        self.cleanup(server, {"path": path}, {})


class W2Patches(Workload):
    key = "w2"
    title = "1 GiB in 5 MiB PATCHes"
    servers = ["chunkd", "chunkd-durable", "tus-node", "tuspy", "tuspy-malloc"]

    def describe(self) -> str:
        return f"{mib(self.h.size1)} in 5 MiB PATCHes"

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        r = runClient(loadgen("patches", "--url", server.base + "/files/", "--file", self.h.src1,
                              "--chunk", str(5 * MiB)))
        out = parseClient(r, server.name)
        state["path"] = out["paths"][0]
        return {"seconds": out["seconds"], "mbps": self.h.size1 / out["seconds"] / 1e6,
                "patches": out["requests"], "lat_p50_ms": out["lat_p50_ms"],
                "lat_p99_ms": out["lat_p99_ms"], "client_cpu": r["cpu"]}

    def setup(self, server: Server) -> Any:
        return {}

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        p = server.tusDataPath(state["path"])
        if not os.path.exists(p):
            return f"no stored file at {p}"
        if sha256File(p) != self.h.sha1:
            return "sha256 of the stored file differs from the source"
        return None

    def cleanup(self, server: Server, state: Any, result: Dict[str, Any]) -> None:
        if "path" in state:
            try:
                os.unlink(server.tusDataPath(state["path"]))
            except FileNotFoundError:
                pass
            tusDelete(server, state["path"])

    def warmup(self, server: Server) -> None:
        r = runClient(loadgen("patches", "--url", server.base + "/files/", "--file", self.h.srcWarm,
                              "--chunk", str(5 * MiB)))
        out = parseClient(r, server.name)
        self.cleanup(server, {"path": out["paths"][0]}, {})


class W3Concurrent(Workload):
    key = "w3"
    title = "64 concurrent 16 MiB uploads"
    servers = ["chunkd", "chunkd-durable", "tus-node", "tuspy", "tuspy-malloc", "nginx"]

    def describe(self) -> str:
        return f"{self.h.n3} concurrent {mib(self.h.size3)} uploads"

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        proto = "put" if isinstance(server, Nginx) else "tus"
        url = server.base + ("/up/" if proto == "put" else "/files/")
        r = runClient(loadgen("concurrent", "--url", url, "--file", self.h.src1, "--n", str(self.h.n3),
                              "--size", str(self.h.size3), "--proto", proto, "--tag", f"w3-{time.time_ns()}"))
        out = parseClient(r, server.name)
        state["paths"] = out["paths"]
        return {"seconds": out["seconds"], "mbps": out["bytes"] / out["seconds"] / 1e6,
                "lat_p50_ms": out["lat_p50_ms"], "lat_p99_ms": out["lat_p99_ms"], "client_cpu": r["cpu"]}

    def setup(self, server: Server) -> Any:
        return {}

    def dataPath(self, server: Server, path: str) -> str:
        return server.putPath(path) if isinstance(server, Nginx) else server.tusDataPath(path)

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        bad = 0
        for i, path in enumerate(state["paths"]):
            p = self.dataPath(server, path)
            if not os.path.exists(p) or sha256File(p) != self.h.sha3[i]:
                bad += 1
        return f"{bad} of {len(state['paths'])} stored files have the wrong sha256" if bad else None

    def cleanup(self, server: Server, state: Any, result: Dict[str, Any]) -> None:
        for path in state.get("paths", []):
            try:
                os.unlink(self.dataPath(server, path))
            except FileNotFoundError:
                pass
            tusDelete(server, path)

    def warmup(self, server: Server) -> None:
        proto = "put" if isinstance(server, Nginx) else "tus"
        url = server.base + ("/up/" if proto == "put" else "/files/")
        r = runClient(loadgen("concurrent", "--url", url, "--file", self.h.src1, "--n", "8",
                              "--size", str(MiB), "--proto", proto, "--tag", "warm"))
        out = parseClient(r, server.name)
        self.cleanup(server, {"paths": out["paths"]}, {})


class W4Resumable(Workload):
    key = "w4"
    title = "256 MiB via Resumable.js (1 MiB chunks, 3 at a time)"
    servers = ["chunkd", "chunkd-durable", "express-multer"]
    touch = 768 * MiB

    def describe(self) -> str:
        return f"{mib(self.h.size4)} via Resumable.js (1 MiB chunks, 3 at a time), end to end"

    def setup(self, server: Server) -> Any:
        return {"filename": f"w4-{time.time_ns()}.bin"}

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        r = runClient(loadgen("resumable", "--url", server.base + "/resumable", "--file", self.h.src4,
                              "--chunk", str(MiB), "--sim", "3", "--filename", state["filename"]))
        out = parseClient(r, server.name)
        seconds = out["seconds"]
        # End to end: until the assembled file is there (normally it already is
        # when the last chunk is answered; if not, the wait counts).
        t1 = time.perf_counter()
        extra = 0.0
        while True:
            p = server.completedFile(state["filename"])
            if p is not None and os.path.getsize(p) >= self.h.size4:
                break
            if time.perf_counter() - t1 > 60:
                break
            time.sleep(0.002)
            extra = time.perf_counter() - t1
        seconds += max(0.0, extra)
        return {"seconds": seconds, "mbps": self.h.size4 / seconds / 1e6, "chunks": out["chunks"],
                "lat_p50_ms": out["lat_p50_ms"], "lat_p99_ms": out["lat_p99_ms"], "client_cpu": r["cpu"],
                "wait_after_last_chunk_s": extra}

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        p = server.completedFile(state["filename"])
        if p is None:
            return "no completed file"
        if sha256File(p) != self.h.sha4:
            return "sha256 of the completed file differs from the source"
        return None

    def cleanup(self, server: Server, state: Any, result: Dict[str, Any]) -> None:
        for sub in ("complete", "uploads", "chunks", "tmp", "resumable"):
            d = os.path.join(server.dir, sub)
            if os.path.isdir(d):
                for dirpath, _, files in os.walk(d):
                    for n in files:
                        os.unlink(os.path.join(dirpath, n))

    def warmup(self, server: Server) -> None:
        fn = f"warm-{time.time_ns()}.bin"
        r = runClient(loadgen("resumable", "--url", server.base + "/resumable", "--file", self.h.srcWarm,
                              "--chunk", str(MiB), "--sim", "3", "--filename", fn))
        parseClient(r, server.name)
        time.sleep(0.5)
        self.cleanup(server, {}, {})


class W5Head(Workload):
    key = "w5"
    title = "10,000 HEADs on 100 connections"
    servers = ["chunkd", "chunkd-durable", "tus-node", "tuspy", "tuspy-malloc", "nginx"]
    headline = ("rate", "req/s")
    touch = 256 * MiB
    uploads = 100
    size = 64 * 1024

    def __init__(self, h: "Harness") -> None:
        super().__init__(h)
        self.targets: Dict[str, List[str]] = {}

    def prepareServer(self, server: Server) -> None:
        # 100 finished 64 KiB uploads (nginx: 100 files PUT), one per connection:
        # a client checking where its upload stands asks about its own upload.
        proto = "put" if isinstance(server, Nginx) else "tus"
        url = server.base + ("/up/" if proto == "put" else "/files/")
        r = runClient(loadgen("concurrent", "--url", url, "--file", self.h.src1, "--n", str(self.uploads),
                              "--size", str(self.size), "--proto", proto, "--tag", "w5"))
        self.targets[server.name] = parseClient(r, server.name)["paths"]

    def describe(self) -> str:
        return f"{self.h.n5:,} HEADs on 100 connections"

    def head(self, server: Server, n: int) -> Dict[str, Any]:
        return runClient(loadgen("head", "--url", server.base + "/", "--n", str(n), "--conns", "100",
                                 "--paths", ",".join(self.targets[server.name]),
                                 "--header", "Tus-Resumable: 1.0.0"))

    def warmup(self, server: Server) -> None:
        self.prepareServer(server)
        self.head(server, 1000)

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        r = self.head(server, self.h.n5)
        out = parseClient(r, server.name)
        if set(out["statuses"]) != {"200"}:
            raise RuntimeError(f"{server.name}: HEAD statuses {out['statuses']}")
        return {"seconds": out["seconds"], "rate": out["rate"], "lat_p50_ms": out["lat_p50_ms"],
                "lat_p99_ms": out["lat_p99_ms"], "client_cpu": r["cpu"]}

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        # the files asked about must still be the ones stored
        bad = 0
        for i, path in enumerate(self.targets[server.name]):
            p = server.putPath(path) if isinstance(server, Nginx) else server.tusDataPath(path)
            if not os.path.exists(p) or sha256Range(p, 0, self.size) != self.h.sha5[i]:
                bad += 1
        return f"{bad} stored files changed" if bad else None


class W8HeadWhileStreaming(Workload):
    key = "w8"
    title = "HEAD latency while 16 uploads stream"
    servers = ["chunkd-durable", "chunkd", "tus-node", "tuspy", "tuspy-malloc"]
    headline = ("head_p99_ms", "HEAD p99 ms")
    streams = 16
    headLength = 64 * 1024

    def __init__(self, h: "Harness") -> None:
        super().__init__(h)
        self.targets: Dict[str, str] = {}

    def describe(self) -> str:
        return (f"HEAD latency while {self.streams} tus uploads of {mib(self.h.size8)} stream "
                f"({self.h.duration8:g} s, 4 HEAD connections, 10 ms apart)")

    def warmup(self, server: Server) -> None:
        # the finished upload the HEADs ask about: bytes 0..64 KiB of the source
        self.targets[server.name] = tusFinished(server, self.h.src1, self.headLength, "w8-head.bin")

    def setup(self, server: Server) -> Any:
        return {}

    def run(self, server: Server, state: Any) -> Dict[str, Any]:
        r = runClient(loadgen("headload", "--url", server.base + "/files/", "--file", self.h.src1,
                              "--streams", str(self.streams), "--size", str(self.h.size8),
                              "--duration", str(self.h.duration8), "--head-path", self.targets[server.name],
                              "--head-length", str(self.headLength)))
        out = parseClient(r, server.name)
        state["uploads"] = out["uploads"]
        head = out["head"]
        if not head["requests"]:
            raise RuntimeError(f"{server.name}: no HEAD was answered while the uploads streamed")
        if set(head["statuses"]) != {"200"} or head["wrong_offset"]:
            raise RuntimeError(f"{server.name}: HEAD statuses {head['statuses']}, "
                               f"{head['wrong_offset']} with a wrong Upload-Offset")
        return {"seconds": out["seconds"], "mbps": out["bytes"] / out["seconds"] / 1e6,
                "uploads": len(out["uploads"]), "heads": head["requests"],
                "head_p50_ms": head["lat_p50_ms"], "head_p99_ms": head["lat_p99_ms"],
                "head_max_ms": head["lat_max_ms"], "client_cpu": r["cpu"]}

    def verify(self, server: Server, state: Any, result: Dict[str, Any]) -> Optional[str]:
        bad = 0
        for path, slot in state["uploads"]:
            p = server.tusDataPath(path)
            if not os.path.exists(p) or sha256File(p) != self.h.sha8[slot]:
                bad += 1
        target = server.tusDataPath(self.targets[server.name])
        if not os.path.exists(target) or sha256File(target) != self.h.sha8head:
            bad += 1
        return f"{bad} of {len(state['uploads']) + 1} stored files have the wrong sha256" if bad else None

    def cleanup(self, server: Server, state: Any, result: Dict[str, Any]) -> None:
        for path, _ in state.get("uploads", []):
            try:
                os.unlink(server.tusDataPath(path))
            except FileNotFoundError:
                pass
            tusDelete(server, path)


class ScriptWorkload:
    """
    A workload measured by a script of its own (bench/many_uploads.py,
    bench/startup.py) against chunkd alone: the harness runs it once per
    variant with --json and keeps its figures under the workload's key.
    """

    key = "w?"
    title = "?"
    script = "?"
    servers = ["chunkd-durable"]

    def __init__(self, h: "Harness") -> None:
        self.h = h

    def describe(self) -> str:
        return self.title

    def variants(self, root: str) -> List[Tuple[str, Optional[List[str]], str]]:
        """(name, arguments or None to skip, why skipped)"""
        raise NotImplementedError


class W6ManyUploads(ScriptWorkload):
    key = "w6"
    title = "many tus uploads at once under the write budget (bench/many_uploads.py)"
    script = "many_uploads.py"
    budgets = "256MiB,0"

    def sizes(self) -> Tuple[int, str]:
        return (200, "1MiB") if self.h.args.quick else (1000, "2MiB")

    def describe(self) -> str:
        n, size = self.sizes()
        return (f"{n:,} tus uploads of {size.replace('MiB', ' MiB')} at once, durable, "
                f"disk.max_buffered 256 MiB and none (bench/many_uploads.py)")

    def variants(self, root: str) -> List[Tuple[str, Optional[List[str]], str]]:
        n, size = self.sizes()
        args = ["--n", str(n), "--size", size, "--budgets", self.budgets, "--rounds", str(self.h.runs)]
        helpText = subprocess.run([sys.executable, os.path.join(root, "bench", self.script), "--help"],
                                  capture_output=True, text=True, cwd=root).stdout
        slow: Optional[List[str]] = args + ["--slow-disk"] if "--slow-disk" in helpText else None
        return [("default", args, ""),
                ("slow-disk", slow, "bench/many_uploads.py has no --slow-disk option in this tree yet")]


class W7Startup(ScriptWorkload):
    key = "w7"
    title = "start-up with many upload records (bench/startup.py)"
    script = "startup.py"

    def counts(self) -> List[int]:
        return [10000] if self.h.args.quick else [100000, 1000000]

    def describe(self) -> str:
        return ("start-up with " + " and ".join(f"{n:,}" for n in self.counts())
                + " upload records: first HEAD answered (bench/startup.py)")

    def variants(self, root: str) -> List[Tuple[str, Optional[List[str]], str]]:
        # At most 3 rounds: each one starts chunkd on the same records and
        # waits for its background check of all of them (minutes at 1M).
        rounds = str(min(self.h.runs, 3))
        return [(str(n), ["--uploads", str(n), "--rounds", rounds], "") for n in self.counts()]


WORKLOADS: List[type] = [W1SinglePatch, W2Patches, W3Concurrent, W4Resumable, W5Head, W6ManyUploads, W7Startup,
                         W8HeadWhileStreaming]


# -- the harness -------------------------------------------------------------------


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = args.workdir
        os.makedirs(self.workdir, exist_ok=True)
        quick = args.quick
        self.size1 = 128 * MiB if quick else GiB
        self.n3, self.size3 = (16, 4 * MiB) if quick else (64, 16 * MiB)
        self.size4 = 32 * MiB if quick else 256 * MiB
        self.n5 = 2000 if quick else 10000
        self.size8, self.duration8 = (8 * MiB, 2.0) if quick else (64 * MiB, 5.0)
        self.runs = args.runs or (2 if quick else 5)
        self.results: Dict[str, Any] = {"workloads": {}, "skipped": {}}
        self.resultsDir = os.path.abspath(args.results)
        path = os.path.join(self.resultsDir, "results.json")
        if args.merge and os.path.exists(path):
            with open(path) as f:
                self.results = json.load(f)

    def chunkdSource(self) -> None:
        """
        Benchmark a committed chunkd (default HEAD), exported to the work
        directory: the working tree may be mid-edit by others.
        """
        which = self.args.chunkd
        if which == "worktree":
            os.environ["CHUNKD_PYTHONPATH"] = ROOT
            self.chunkdRev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip() + "+worktree"
            return
        if os.path.isdir(which):
            os.environ["CHUNKD_PYTHONPATH"] = os.path.abspath(which)
            self.chunkdRev = "tree " + os.path.abspath(which)
            return
        dest = os.path.join(self.workdir, "chunkd-src")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        archive = subprocess.run(["git", "-C", ROOT, "archive", which, "chunkd", "twisted"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
        os.environ["CHUNKD_PYTHONPATH"] = dest
        self.chunkdRev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", which],
                                        capture_output=True, text=True).stdout.strip()
        log(f"chunkd under test: commit {self.chunkdRev} (exported to {dest})")

    def makeSources(self) -> None:
        def make(name: str, size: int) -> str:
            p = os.path.join(self.workdir, name)
            if not os.path.exists(p) or os.path.getsize(p) != size:
                log(f"making {name} ({size >> 20} MiB of random bytes)")
                with open(p, "wb") as f:
                    left = size
                    while left:
                        n = min(left, 16 * MiB)
                        f.write(os.urandom(n))
                        left -= n
            return p

        self.src1 = make("source-1.bin", self.size1)
        self.src4 = make("source-4.bin", self.size4)
        self.srcWarm = make("source-warm.bin", 16 * MiB)
        log("hashing sources")
        self.sha1 = sha256File(self.src1)
        self.sha3 = [sha256Range(self.src1, i * self.size3, self.size3) for i in range(self.n3)]
        self.sha4 = sha256File(self.src4)
        self.sha5 = [sha256Range(self.src1, i * W5Head.size, W5Head.size) for i in range(W5Head.uploads)]
        self.shaWarm = sha256File(self.srcWarm)
        self.sha8 = [sha256Range(self.src1, i * self.size8, self.size8) for i in range(W8HeadWhileStreaming.streams)]
        self.sha8head = sha256Range(self.src1, 0, W8HeadWhileStreaming.headLength)

    def machine(self) -> Dict[str, str]:
        def sh(cmd: str) -> str:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

        model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
        return {
            "nproc": sh("nproc"),
            "cpu": model,
            "memory": sh("free -h | awk '/Mem:/{print $2}'"),
            "disk": sh(f"df -h {self.workdir} | awk 'NR==2{{print $1\" \"$2\" (\"$5\" used)\"}}'")
            + ", " + sh(f"findmnt -no FSTYPE -T {self.workdir}"),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "node": sh("node --version"),
            "nginx": sh("nginx -v 2>&1").replace("nginx version: ", ""),
            "curl": sh("curl --version | head -1").split(" (")[0],
            "tus_server": sh(f"node -p \"require('{BENCH}/node_modules/@tus/server/package.json').version\""),
            "tuspyserver": sh(f"{Tuspy.python()} -c 'import importlib.metadata as m; print(m.version(\"tuspyserver\"))'"),
            "uvicorn": sh(f"{Tuspy.python()} -c 'import importlib.metadata as m; print(m.version(\"uvicorn\"))'"),
            "fastapi": sh(f"{Tuspy.python()} -c 'import importlib.metadata as m; print(m.version(\"fastapi\"))'"),
            "twisted": sh(f"{sys.executable} -c 'import twisted; print(twisted.__version__)'"),
            "chunkd_commit": self.chunkdRev,
        }

    def runWorkload(self, cls: type) -> None:
        wl: Workload = cls(self)
        names = [n for n in wl.servers if not self.args.servers or n in self.args.servers]
        if self.args.experiment and wl.key in ("w1", "w2", "w3", "w4"):
            names.append("chunkd-exp")
        for n in list(names):
            missing = getattr(SERVER_CLASSES[n], "missing", lambda: None)()
            if missing:
                log(f"SKIP {n} in {wl.key}: {missing}")
                self.results.setdefault("skipped_servers", {})[f"{wl.key} {n}"] = missing
                names.remove(n)
        if not names:
            return
        servers: List[Server] = []
        port = self.args.port
        for i, n in enumerate(names):
            servers.append(SERVER_CLASSES[n](self.workdir, port + i))
        log(f"== {wl.key}: {wl.title}: {', '.join(names)} x {self.runs} runs")
        idle: Dict[str, float] = {}
        idleWarm: Dict[str, float] = {}
        try:
            for s in servers:
                s.start()
                time.sleep(0.5)
                # idle: started, listening, nothing asked yet
                idle[s.name] = sum(statusKB(p, "VmRSS:") for p in s.pids()) / 1024
            if isinstance(wl, W4Resumable):
                ch = [s for s in servers if isinstance(s, Chunkd)]
                if ch and not ch[0].resumableAvailable():
                    msg = ("chunkd answers 404/405 on /resumable: the Resumable.js endpoint is not in "
                           "this checkout yet; workload 4 skipped")
                    log("SKIP " + msg)
                    self.results["skipped"][wl.key] = msg
                    return
            for s in servers:
                log(f"   warm-up {s.name}")
                wl.warmup(s)
            time.sleep(0.5)
            for s in servers:
                # idle again after the warm-up: what is held before the first timed run
                idleWarm[s.name] = sum(statusKB(p, "VmRSS:") for p in s.pids()) / 1024
                log(f"   idle RSS {s.name}: {idle[s.name]:.1f} MB after start, "
                    f"{idleWarm[s.name]:.1f} MB before the first timed run")
            runs: Dict[str, List[Dict[str, Any]]] = {s.name: [] for s in servers}
            failures: Dict[str, List[str]] = {s.name: [] for s in servers}
            for r in range(self.runs):
                order = servers[r % len(servers):] + servers[: r % len(servers)]
                for s in order:
                    state = wl.setup(s)
                    waited = waitQuiet(self.args.quiet_limit, self.args.quiet_wait) if self.args.quiet_wait else 0
                    settle()
                    touchMemory(self.workdir, int(self.size1 * 1.25) if wl.touch == GiB else wl.touch)
                    pids = s.pids()
                    busy0 = systemBusy()
                    cpu0 = cpuSeconds(pids)
                    sampler = RSSSampler(pids)
                    sampler.start()
                    try:
                        m = wl.run(s, state)
                    except Exception as e:
                        sampler.stop()
                        log(f"   run {r + 1} {s.name}: FAILED {e}")
                        failures[s.name].append(str(e))
                        wl.cleanup(s, state, {})
                        continue
                    time.sleep(0.05)
                    m["server_cpu"] = cpuSeconds(pids) - cpu0
                    # CPU time others used meanwhile (not the server, not the client)
                    m["other_cpu"] = max(0.0, systemBusy() - busy0 - m["server_cpu"] - m.get("client_cpu", 0))
                    m["waited_quiet_s"] = waited
                    m["peak_rss_mb"] = sampler.stop() / 1024
                    bad = wl.verify(s, state, m)
                    m["sha256_ok"] = bad is None
                    if bad:
                        failures[s.name].append(bad)
                    wl.cleanup(s, state, m)
                    runs[s.name].append(m)
                    head = wl.headline[0]
                    log(f"   run {r + 1} {s.name:15s} {m[head]:9.1f} {wl.headline[1]}  cpu {m['server_cpu']:.2f}s"
                        f"  others {m['other_cpu']:.2f}s"
                        f"  rss {m['peak_rss_mb']:.0f} MB  sha256 {'ok' if bad is None else 'WRONG: ' + bad}")
            hwm = {s.name: sum(statusKB(p, "VmHWM:") for p in s.pids()) / 1024 for s in servers}
            self.results["skipped"].pop(wl.key, None)
            self.results.setdefault("commits", {})[wl.key] = self.chunkdRev
            self.results["workloads"][wl.key] = {
                "title": wl.describe(), "headline": wl.headline, "servers": names,
                "runs": runs, "failures": failures, "vmhwm_mb": hwm,
                "idle_rss_mb": idle, "idle_rss_before_runs_mb": idleWarm,
            }
            self.save()
        finally:
            for s in servers:
                s.stop()

    def scriptsTree(self) -> str:
        """
        Where to run W6's and W7's scripts from: they test the chunkd beside
        them (their ROOT, from their own location).  For the worktree that is
        this checkout; for an exported commit or a directory, a tree in the
        work directory whose chunkd/ and twisted/ link to the one under test,
        with this checkout's bench scripts copied beside them.
        """
        src = os.path.abspath(os.environ["CHUNKD_PYTHONPATH"])
        if src == ROOT:
            return ROOT
        tree = os.path.join(self.workdir, "scripts-tree")
        shutil.rmtree(tree, ignore_errors=True)
        os.makedirs(os.path.join(tree, "bench"))
        for d in ("chunkd", "twisted"):
            os.symlink(os.path.join(src, d), os.path.join(tree, d))
        for f in ("many_uploads.py", "startup.py", "harness.py", "loadgen.py"):
            shutil.copy(os.path.join(BENCH, f), os.path.join(tree, "bench", f))
        return tree

    def runScript(self, cls: type) -> None:
        wl: ScriptWorkload = cls(self)
        if self.args.servers and not set(self.args.servers) & {"chunkd", "chunkd-durable"}:
            return
        root = self.scriptsTree()
        log(f"== {wl.key}: {wl.describe()} (chunkd only, its durable default)")
        entry: Dict[str, Any] = {"title": wl.describe(), "script": f"bench/{wl.script}", "variants": {},
                                 "skipped": {}, "failures": {}}
        for name, args, why in wl.variants(root):
            if args is None:
                log(f"SKIP {wl.key} {name}: {why}")
                entry["skipped"][name] = why
                continue
            jsonPath = os.path.join(self.workdir, f"{wl.key}-{name}.json")
            cmd = [sys.executable, os.path.join(root, "bench", wl.script), *args, "--json", jsonPath]
            log(f"   {name}: {' '.join(cmd[1:])}")
            t0 = time.time()
            p = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines = []
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line.rstrip("\n"))
                log(f"     | {lines[-1]}")
            rc = p.wait()
            if rc != 0 or not os.path.exists(jsonPath):
                entry["failures"][name] = f"exit {rc}: " + " / ".join(lines[-3:])
                log(f"   {name}: FAILED (exit {rc})")
                continue
            with open(jsonPath) as f:
                figures = json.load(f)
            os.unlink(jsonPath)
            entry["variants"][name] = {"args": args, "figures": figures, "output": lines,
                                       "elapsed_s": time.time() - t0}
        self.results["skipped"].pop(wl.key, None)
        self.results.setdefault("commits", {})[wl.key] = self.chunkdRev
        self.results["workloads"][wl.key] = entry
        self.save()

    def save(self) -> None:
        os.makedirs(self.resultsDir, exist_ok=True)
        with open(os.path.join(self.resultsDir, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)

    def main(self) -> None:
        if self.args.experiment:
            ChunkdExperiment.tree = os.path.abspath(self.args.experiment)
            ChunkdExperiment.extraEnv = dict(
                kv.split("=", 1) for kv in self.args.experiment_env.split(",") if kv)
            self.results["experiment"] = {"tree": ChunkdExperiment.tree, "env": ChunkdExperiment.extraEnv,
                                          "note": self.args.experiment_note}
        self.results["date"] = datetime.date.today().isoformat()
        self.chunkdSource()
        if self.args.merge and self.results.get("machine"):
            commits = self.results.setdefault("commits", {})
            for key in self.results["workloads"]:
                commits.setdefault(key, self.results["machine"]["chunkd_commit"])
        self.results["machine"] = self.machine()
        self.results["config"] = {"runs": self.runs, "quick": self.args.quick, "size1": self.size1,
                                  "n3": self.n3, "size3": self.size3, "size4": self.size4, "n5": self.n5,
                                  "size8": self.size8, "duration8": self.duration8,
                                  "quiet_wait": self.args.quiet_wait, "quiet_limit": self.args.quiet_limit,
                                  "nginx_body_buffer": os.environ.get("NGINX_BODY_BUFFER", "1m")}
        self.makeSources()
        t0 = time.time()
        for cls in WORKLOADS:
            if self.args.only and cls.key not in self.args.only:
                continue
            if issubclass(cls, ScriptWorkload):
                self.runScript(cls)
            else:
                self.runWorkload(cls)
        self.results["elapsed_s"] = self.results.get("elapsed_s", 0) * bool(self.args.merge) + time.time() - t0
        self.save()
        import report

        report.write(self.results, self.resultsDir)
        log(f"done in {time.time() - t0:.0f}s: {self.resultsDir}/results.md")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=0, help="runs per server and workload (default 5; quick 2)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. w1,w3")
    p.add_argument("--servers", default="", help="comma-separated servers to include")
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--quiet-wait", type=float, default=30,
                   help="before a run, wait up to this many seconds for other work to calm down (0: never)")
    p.add_argument("--quiet-limit", type=float, default=0.3, help="'calm' = fewer busy CPUs than this")
    p.add_argument("--results", default=RESULTS, help="where results.{json,md,png} go (default bench/results)")
    p.add_argument("--workdir", default="/tmp/chunkd-bench")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--experiment", default="",
                   help="also run an experimental chunkd tree (DIR with chunkd/ and twisted/plugins/) as "
                        "'chunkd-exp' in workloads 1-4")
    p.add_argument("--experiment-env", default="", help="K=V,... environment for chunkd-exp")
    p.add_argument("--experiment-note", default="", help="what chunkd-exp changes (for the report)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other workloads of an earlier results.json (e.g. --only w4 --merge)")
    p.add_argument("--chunkd", default="HEAD",
                   help="chunkd to test: a git revision (default HEAD, exported), 'worktree', or a directory "
                        "holding chunkd/ and twisted/plugins/")
    a = p.parse_args()
    a.only = [x for x in a.only.split(",") if x]
    a.servers = [x for x in a.servers.split(",") if x]
    h = Harness(a)
    try:
        h.main()
    finally:
        if not a.keep_workdir:
            shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, BENCH)
    main()
