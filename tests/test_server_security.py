"""`sdlab serve` refuses what local SD servers have been attacked with, and survives bad requests.

CSRF from a web page, DNS rebinding, paths instead of names, huge bodies, decompression bombs,
wrong credentials; and a request that raised never stops the next one.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib

import PIL.Image
import PIL.PngImagePlugin
import pytest
import requests
from server_utils import serve
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sdlab.server.security import Guard

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a handwritten digit 1", "steps": 2, "width": 32, "height": 32, "seed": 1}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels: 10 gigapixels from a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def png() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.effect_noise((32, 32), 64).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Origin": "http://evil.example"}, 403, "origin 'http://evil.example' are not allowed"),
        ({"Origin": "null"}, 403, "origin 'null' are not allowed"),
        ({"Host": "evil.example:7860"}, 403, "the Host header 'evil.example:7860'"),
        ({"Host": "attacker.127.0.0.1.nip.io"}, 403, "is not one this server answers to"),
        (
            {"Host": "evil@localhost:7860"},
            403,
            "is not one this server answers to",
        ),  # user info names no host
    ],
)
def test_cross_site_and_rebinding_requests_are_refused(server, headers, status, message):
    response = requests.post(server + TXT2IMG, json=SMALL, headers=headers, timeout=60)
    assert response.status_code == status and message in response.json()["detail"]


@pytest.mark.parametrize("header", ["Origin", "Authorization", "Host"])
def test_a_repeated_security_header_is_refused(server, header):
    """Issue 22: with two Origin (or Authorization, Host) headers the guard read the last, Starlette and
    gradio the first; the ambiguity is now refused before anything reads either."""
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", "/sdapi/v1/options", skip_host=header == "Host")
    values = {"Origin": ["http://127.0.0.1", "http://evil.example"], "Authorization": ["Basic eDp5", "Basic eTp6"],
              "Host": [f"127.0.0.1:{port}", "evil.example"]}[header]  # fmt: skip
    for value in values:
        conn.putheader(header, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 400
    # two Hosts never get that far: the HTTP parser (h11) refuses them itself
    assert f"repeats its {header} header" in body if header != "Host" else "Invalid HTTP request" in body
    conn.close()


def test_the_server_own_origin_and_clients_without_origin_are_served(server):
    own = requests.post(server + TXT2IMG, json=SMALL, headers={"Origin": server}, timeout=60)
    assert own.status_code == 200 and len(own.json()["images"]) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"override_settings": {"sd_model_checkpoint": "../Stable-diffusion/tiny"}}, "unknown model"),
        ({"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, "unknown model"),
        ({"prompt": "a cat <lora:../../../etc/passwd:1>"}, "unknown LoRA '../../../etc/passwd'"),
        ({"prompt": "a cat <lora:/etc/hostname:1>"}, "unknown LoRA '/etc/hostname'"),
        ({"init_images": ["/etc/passwd"]}, "init_images[0] is not a base64-encoded image"),
        ({"init_images": [b64(png_bomb())]}, "decompression bomb"),
        ({"init_images": [b64(png()[:1500])]}, "truncated or corrupt"),
        ({"seed": 2**40}, "seed must be an integer from 0 to 4294967295"),
        ({"steps": 0}, "num_inference_steps (--steps) must be an integer from 1 to"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"s_noise": float("inf")}, "s_noise must be a finite number"),
        ({"sampler_index": 3, "sampler_name": None}, "sampler_index must be a sampler's name"),
    ],
)
def test_names_not_paths_and_bad_images_get_422_with_one_sentence(server, body, message):
    route = "/sdapi/v1/img2img" if "init_images" in body else TXT2IMG
    data = json.dumps({**SMALL, **body})  # Python's json writes NaN and Infinity, as some clients do
    response = requests.post(
        server + route, data=data, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"] and "Traceback" not in response.text


def test_a_request_after_one_that_raised_is_served(server):
    options = requests.post(server + "/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}, timeout=60)
    assert options.status_code == 422 and "unknown model 'nope'" in options.json()["detail"]
    raised = requests.post(  # fails inside the worker, in the sampling loop, with a LoRA applied
        server + "/sdapi/v1/img2img",
        json={**SMALL, "init_images": [b64(png())], "denoising_strength": 0.1, "prompt": "x <lora:style>",
              "override_settings": {"sd_model_checkpoint": "tiny"}},
        timeout=60,
    )  # fmt: skip
    assert raised.status_code == 422 and "steps x strength" in raised.json()["detail"]
    after = requests.post(server + TXT2IMG, json=SMALL, timeout=60)
    assert after.status_code == 200 and len(after.json()["images"]) == 1


def test_a_100_mb_body_is_refused_before_it_is_read(server):
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", TXT2IMG)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(100 * 2**20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and b"larger than the server's limit of 32 MiB" in response.read()


def test_a_streamed_body_over_the_limit_is_refused():
    app = Guard(
        Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"), methods=["POST"])]), max_body=1000
    )
    client = TestClient(app, base_url="http://127.0.0.1")
    assert client.post("/", content=iter([b"x" * 600, b"x" * 600])).status_code == 413
    assert client.post("/", content=iter([b"x" * 600, b"x" * 300])).text == "ok"


def test_auth_is_required_when_set_and_never_echoed(tmp_path, data_dir):
    secret = "correct-horse-battery"
    shutil.copytree(data_dir / "models" / "Stable-diffusion" / "tiny", tmp_path / "other")
    with serve(
        "--api-auth", f"alice:{secret}", "--data-dir", str(data_dir), "--ckpt-dir", str(tmp_path)
    ) as url:
        assert requests.get(url + "/sdapi/v1/sd-models", timeout=30).status_code == 401
        wrong = requests.get(url + "/sdapi/v1/sd-models", auth=("alice", "wrong"), timeout=30)
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic")
        assert requests.get(url + "/sdapi/v1/sd-models", auth=("bob", secret), timeout=30).status_code == 401
        ok = requests.get(url + "/sdapi/v1/sd-models", auth=("alice", secret), timeout=30)
        assert ok.status_code == 200 and [m["model_name"] for m in ok.json()] == [
            "digits",
            "tiny",
            "tiny-xl",
            "other",
        ]
        schema = requests.get(url + "/openapi.json", auth=("alice", secret), timeout=30).json()
        for path, methods in schema["paths"].items():
            if "get" in methods and "{" not in path:
                body = requests.get(url + path, auth=("alice", secret), timeout=30).text
                assert secret not in body and "--api-auth" not in body, path
        assert (
            requests.get(url + "/sdapi/v1/cmd-flags", auth=("alice", secret), timeout=30).status_code == 404
        )


def test_listen_without_auth_refuses_to_start():
    done = subprocess.run(
        [sys.executable, "-m", "sdlab.cli.main", "serve", "--listen"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--listen makes the server reachable from the network; it needs --api-auth" in done.stderr
    assert "Traceback" not in done.stderr


def test_docs_are_served_without_a_cdn(server):
    page = requests.get(server + "/docs", timeout=30).text
    assert "/docs-static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert requests.get(server + "/docs-static/swagger-ui-bundle.js", timeout=30).status_code == 200
    assert "/sdapi/v1/txt2img" in requests.get(server + "/openapi.json", timeout=30).json()["paths"]


def test_the_web_ui_takes_no_server_path_from_the_page(server, tmp_path):
    """A file value naming a path on the server (not an upload) is refused before any handler reads it."""
    secret = tmp_path / "secret.png"
    image = PIL.Image.new("RGB", (8, 8))
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("parameters", "the secret prompt\nSteps: 1, Sampler: DDIM, Seed: 1")
    image.save(secret, pnginfo=info)
    for path in (str(secret), "/etc/passwd"):
        call = requests.post(
            server + "/gradio_api/call/png_parameters",
            json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]},
            timeout=30,
        )
        stream = requests.get(
            server + f"/gradio_api/call/png_parameters/{call.json()['event_id']}", timeout=30
        ).text
        assert "event: error" in stream and "not uploaded by a user" in stream
        assert "the secret prompt" not in stream and "root:" not in stream
    served = requests.get(server + f"/gradio_api/file={secret}", timeout=30)
    assert served.status_code == 403


def test_a_body_that_is_not_json_is_one_sentence(server):
    response = requests.post(
        server + TXT2IMG,
        data=b'{"prompt": "a cat",, }',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the request body is not valid JSON (at character")
