"""Starting a real `sdlab serve` on a free loopback port in a subprocess, for the HTTP tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(*args: str, timeout: float = 120):
    """`sdlab serve --port P ARGS...`; yields its base URL, stops it afterwards."""
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"sdlab-serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sdlab.cli.main", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sdlab serve exited with {process.returncode}: {log.read_text()}")
            try:
                requests.get(f"{url}/sdapi/v1/progress", timeout=2, auth=_auth(args))
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _auth(args: tuple[str, ...]) -> tuple[str, str] | None:
    if "--api-auth" in args:
        user, _, password = args[args.index("--api-auth") + 1].partition(":")
        return user, password
    return None
