#!/bin/sh
# chunkd benchmark: install the peers, then run every workload against every
# server and write bench/results/results.{md,png,json}.
#   bench/run.sh              full run (5 runs per figure, ~30 min)
#   bench/run.sh --quick      small sizes, 2 runs: a smoke test
#   bench/run.sh --runs 3 --only w1,w3 --servers chunkd,tus-node
# Set BENCH_NO_INSTALL=1 to skip the installs.  tuspyserver goes into its own
# virtualenv, bench/.venv-tuspy (TUSPY_VENV to put it elsewhere; git-ignored).
# TUSPY_UVICORN_ARGS adds uvicorn options for the tuspy peers (e.g.
# --no-access-log; the default is uvicorn's own, access log on).
set -e
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$BENCH_NO_INSTALL" ]; then
    if ! command -v nginx >/dev/null 2>&1 || ! command -v strace >/dev/null 2>&1; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx strace curl
    fi
    (cd "$here" && npm install --no-audit --no-fund --loglevel=error)
    python3 -m pip install -q --disable-pip-version-check matplotlib py-spy \
        "twisted[tls]>=25.5" "klein>=24.8" "treq>=24.9" "pyyaml>=6.0" "multipart>=1.2" service-identity "prometheus-client>=0.20" \
        "PyJWT[crypto]>=2.10" "http-sf>=1.5" tqdm
    # tuspyserver, the Python tus peer, in a virtualenv of its own: its
    # FastAPI/Starlette stack must not mix with chunkd's environment.
    venv="${TUSPY_VENV:-$here/.venv-tuspy}"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        tuspyserver==4.4.3 fastapi==0.165.0 uvicorn==0.55.0
fi
exec python3 "$here/harness.py" "$@"
