"""Load benchmark for `sdlab serve`: N concurrent clients x M requests on the shipped digits model.

Starts a real server on a free loopback port, sends the requests from N client threads, then checks:
- every request succeeded (HTTP 200);
- every image equals the same request sent again alone, afterwards (same PNG bytes);
- the server's resident memory after all requests is within 5% of that after the first 20
  (nothing leaks: models, LoRAs, results).
It prints p50/p95 latency, images per second and both memory readings.

    python scripts/bench_serve.py                       # 8 clients x 25 requests = 200
    python scripts/bench_serve.py --clients 4 --requests 10 --steps 20
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

SAMPLERS = ["DPM++ 2M", "Euler a", "DDIM", "UniPC"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per request")
    parser.add_argument("--warmup", type=int, default=20, help="requests before the first memory reading")
    args = parser.parse_args()

    bodies = [
        {
            "prompt": f"a {'thick ' if i % 3 == 0 else ''}handwritten digit {i % 10}",
            "negative_prompt": "thick" if i % 4 == 1 else "",
            "seed": 1000 + i,
            "steps": args.steps,
            "sampler_name": SAMPLERS[i % len(SAMPLERS)],
            "batch_size": 1 + (i % 2),
        }
        for i in range(args.clients * args.requests)
    ]
    port = _free_port()
    url = f"http://127.0.0.1:{port}/sdapi/v1"
    server = subprocess.Popen([sys.executable, "-m", "sdlab.cli.main", "serve", "--port", str(port)])
    try:
        _wait(url, server)
        process = psutil.Process(server.pid)
        send = _sender(url)
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            warm = list(pool.map(send, bodies[: args.warmup]))
            rss_warm = process.memory_info().rss
            rest = list(pool.map(send, bodies[args.warmup :]))
            elapsed = time.perf_counter() - start
        rss_end = process.memory_info().rss
        results = warm + rest
        failed = [r for r in results if r["status"] != 200]
        alone = [send(body) for body in bodies]
        mismatched = sum(a["images"] != r["images"] for a, r in zip(alone, results, strict=True))
    finally:
        server.terminate()
        server.wait(30)

    latencies = sorted(r["seconds"] for r in results)
    images = sum(len(r["images"]) for r in results)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    growth = rss_end / rss_warm - 1
    print(
        f"requests: {len(results)} ({args.clients} clients x {args.requests}), {images} images, {args.steps} steps each"
    )
    print(f"failed: {len(failed)}; images differing from the same request alone: {mismatched}")
    print(
        f"latency p50 {statistics.median(latencies):.3f} s, p95 {p95:.3f} s; {images / elapsed:.2f} images/s"
    )
    print(
        f"server memory: {rss_warm / 2**20:.0f} MiB after {args.warmup} requests, "
        f"{rss_end / 2**20:.0f} MiB after {len(results)} ({growth:+.1%})"
    )
    ok = not failed and not mismatched and abs(growth) <= 0.05
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _sender(url: str):
    session_per_thread: dict[int, requests.Session] = {}

    def send(body: dict) -> dict:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        start = time.perf_counter()
        response = session.post(f"{url}/txt2img", json=body, timeout=600)
        seconds = time.perf_counter() - start
        images = response.json().get("images", []) if response.status_code == 200 else []
        return {"status": response.status_code, "seconds": seconds, "images": images}

    return send


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"sdlab serve exited with {server.returncode}")
        try:
            requests.get(f"{url}/progress", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise SystemExit("sdlab serve did not start in time")


if __name__ == "__main__":
    sys.exit(main())
