"""
The Python tus server a FastAPI user would pick: tuspyserver's router in a
FastAPI app, set up the way tuspyserver's README sets it up (CORS middleware
exposing the tus headers, the router mounted at /files with a completion
hook), run by uvicorn in one process:

    TUSPY_FILES_DIR=DIR python -m uvicorn tuspyserver_app:app \
        --app-dir bench/peers --host 127.0.0.1 --port PORT

It stores each upload's bytes in DIR/<id> and its record in DIR/<id>.info.
Installed into bench/.venv-tuspy by bench/run.sh, apart from chunkd's own
environment.
"""

import os

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from tuspyserver import create_tus_router

app = FastAPI()

app.add_middleware(
    CORSMiddleware,
    allow_origins=["*"],
    allow_methods=["*"],
    allow_headers=["*"],
    expose_headers=[
        "Location",
        "Upload-Offset",
        "Tus-Resumable",
        "Tus-Version",
        "Tus-Extension",
        "Tus-Max-Size",
        "Upload-Expires",
        "Upload-Length",
    ],
)


def uploadComplete(path: str, metadata: dict) -> None:
    # the README's hook logs each finished upload; one line here
    print(f"upload complete: {path}", flush=True)


app.include_router(
    create_tus_router(
        prefix="files",
        files_dir=os.environ["TUSPY_FILES_DIR"],
        on_upload_complete=uploadComplete,
    )
)
