"""Load benchmark for `sdlab serve`: N concurrent clients x M requests on the shipped digits model.

Starts a real server on a free loopback port, sends the requests from N client threads, then checks:
- every request succeeded (HTTP 200);
- every image equals the same request sent again alone, afterwards (same PNG bytes);
- the server's resident memory after all requests is within 5% of that after the first 20
  (nothing leaks: models, LoRAs, results).
It prints p50/p95 latency, images per second and both memory readings.

    python scripts/bench_serve.py                       # 8 clients x 25 requests = 200
    python scripts/bench_serve.py --clients 4 --requests 10 --steps 20
    python scripts/bench_serve.py --soak 10             # 8 clients for 10 minutes, abuse mixed in

The soak (issue 22) keeps N clients sending for M minutes; every fifth request is one the server must refuse
(over its pixel, step or prompt limits, a malformed body): those must get 422 and the others 200. The server's
memory is read every 30 s and must end within 5% of its reading after the warm-up, and never pass it by 10%.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
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
    parser.add_argument(
        "--soak", type=float, default=None, metavar="MINUTES", help="send for this long instead"
    )
    args = parser.parse_args()
    if args.soak:
        return soak(args)

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


ABUSE = [  # what the server must refuse with 422, before any work
    {"prompt": "a digit", "width": 4096, "height": 4096},
    {"prompt": "a digit", "steps": 10_000},
    {"prompt": "x" * 200_000},
    {"prompt": "a BREAK " * 50, "batch_size": 64},
    '{"prompt": ' + "[" * 3000 + "]" * 3000 + "}",
]


def soak(args) -> int:
    """N clients for `args.soak` minutes, a fifth of the requests abusive; see the module doc."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/sdapi/v1"
    server = subprocess.Popen([sys.executable, "-m", "sdlab.cli.main", "serve", "--port", str(port)])
    readings, results = [], []
    try:
        _wait(url, server)
        process = psutil.Process(server.pid)
        send = _sender(url)
        end = time.monotonic() + args.soak * 60

        def client(k: int) -> None:
            i = 0
            while time.monotonic() < end:
                abusive = i % 5 == 4
                body = ABUSE[(i + k) % len(ABUSE)] if abusive else {
                    "prompt": f"a handwritten digit {(i + k) % 10}", "seed": 1000 * k + i, "steps": args.steps,
                    "sampler_name": SAMPLERS[(i + k) % len(SAMPLERS)],
                }  # fmt: skip
                result = send(body)
                results.append((abusive, result["status"]))
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            warmed = len(results) >= args.warmup
            time.sleep(30 if readings else 1)
            if warmed:
                readings.append(process.memory_info().rss)
        for thread in threads:
            thread.join()
    finally:
        server.terminate()
        server.wait(30)
    wrong = [(abusive, status) for abusive, status in results if status != (422 if abusive else 200)]
    warm, last, peak = readings[0], readings[-1], max(readings)
    print(f"soak: {args.clients} clients for {args.soak:g} min, {len(results)} requests "
          f"({sum(a for a, _ in results)} abusive); wrong status: {len(wrong)} {wrong[:3]}")  # fmt: skip
    print(f"server memory: {warm / 2**20:.0f} MiB after warm-up, {last / 2**20:.0f} MiB at the end "
          f"({last / warm - 1:+.1%}), peak {peak / 2**20:.0f} MiB ({peak / warm - 1:+.1%})")  # fmt: skip
    ok = not wrong and abs(last / warm - 1) <= 0.05 and peak / warm - 1 <= 0.10
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _sender(url: str):
    session_per_thread: dict[int, requests.Session] = {}

    def send(body: dict | str) -> dict:
        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        start = time.perf_counter()
        if isinstance(body, str):  # a malformed body, sent as it is
            response = session.post(
                f"{url}/txt2img", data=body, headers={"Content-Type": "application/json"}, timeout=600
            )
        else:
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
