"""`sdlab serve` end to end: a real server process on loopback, driven by the `webuiapi` PyPI client.

Every image the API returns must have the same pixels as the CLI's image for the same settings.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import requests
import webuiapi

from sdlab.cli.main import main

DIGIT = dict(prompt="a handwritten digit 3", seed=11, steps=5, cfg_scale=1.5, width=32, height=32)


@pytest.fixture
def api(server):
    port = int(server.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="DPM++ 2M")


def cli_image(capsys, tmp_path, name: str, *args) -> np.ndarray:
    out = tmp_path / f"{name}.png"
    assert main(["generate", *map(str, args), "-o", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return np.asarray(PIL.Image.open(out).convert("RGB"))


def cli_args(p: dict) -> list:
    return [p["prompt"], "--seed", p["seed"], "--steps", p["steps"], "--cfg", p["cfg_scale"],
            "--height", p["height"], "--width", p["width"]]  # fmt: skip


def test_txt2img_img2img_and_inpainting_equal_the_cli(api, capsys, tmp_path):
    result = api.txt2img(**DIGIT, batch_size=2)
    assert len(result.images) == 2 and result.info["all_seeds"] == [11, 12]
    assert result.info["ignored"] == {}  # webuiapi's neutral defaults are not reported
    assert result.parameters["sampler_name"] == "DPM++ 2M" and result.info["sd_model_name"] == "digits"
    out = tmp_path / "t2i.png"
    assert (
        main(["generate", *map(str, cli_args(DIGIT)), "--scheduler", "dpmpp_2m", "-n", "2", "-o", str(out)])
        == 0
    )
    for i, image in enumerate(result.images):
        cli = np.asarray(PIL.Image.open(tmp_path / f"t2i-{i}.png").convert("RGB"))
        assert np.array_equal(np.asarray(image.convert("RGB")), cli)

    init = tmp_path / "init.png"
    result.images[0].save(init)
    chained = api.img2img(
        images=[result.images[0]], denoising_strength=0.6, **{**DIGIT, "prompt": "a handwritten digit 8"}
    )
    cli = cli_image(capsys, tmp_path, "i2i", *cli_args({**DIGIT, "prompt": "a handwritten digit 8"}),
                    "--scheduler", "dpmpp_2m", "--init-image", init, "--strength", 0.6)  # fmt: skip
    assert np.array_equal(np.asarray(chained.images[0].convert("RGB")), cli)
    assert chained.info["denoising_strength"] == 0.6

    mask = PIL.Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    inpainted = api.img2img(
        images=[result.images[0]], mask_image=mask, mask_blur=4, inpainting_fill=1, inpaint_full_res=False,
        denoising_strength=1.0, **{**DIGIT, "prompt": "a handwritten digit 0"},
    )  # fmt: skip
    cli = cli_image(capsys, tmp_path, "inpaint", *cli_args({**DIGIT, "prompt": "a handwritten digit 0"}),
                    "--scheduler", "dpmpp_2m", "--init-image", init, "--mask", tmp_path / "mask.png",
                    "--mask-blur", 4)  # fmt: skip
    assert np.array_equal(np.asarray(inpainted.images[0].convert("RGB")), cli)
    assert inpainted.info["ignored"] == {}
    # webuiapi's inpainting defaults are A1111's (fill, only masked, padding 0; issue 21): applied, as the CLI
    defaults = api.img2img(images=[result.images[0]], mask_image=mask, **DIGIT)
    assert defaults.info["ignored"] == {}
    cli = cli_image(capsys, tmp_path, "defaults", *cli_args(DIGIT), "--scheduler", "dpmpp_2m", "--init-image", init,
                    "--mask", tmp_path / "mask.png", "--mask-blur", 4, "--strength", 0.75, "--inpainting-fill", "fill",
                    "--padding-mask-crop", 0)  # fmt: skip
    assert np.array_equal(np.asarray(defaults.images[0].convert("RGB")), cli)
    assert "Masked content: fill" in defaults.info["infotexts"][0]
    # a client that leaves the fields out gets A1111's defaults too
    body = {**DIGIT, "sampler_name": "DPM++ 2M", "denoising_strength": 0.75, "mask_blur": 4,
            "init_images": [_b64_png(result.images[0])], "mask": _b64_png(mask)}  # fmt: skip
    bare = requests.post(f"{api.baseurl}/img2img", json=body, timeout=120).json()
    assert json.loads(bare["info"])["ignored"] == {}
    image = PIL.Image.open(io.BytesIO(base64.b64decode(bare["images"][0]))).convert("RGB")
    assert np.array_equal(np.asarray(image), cli)


def test_an_sdxl_model_through_the_api_equals_the_cli(api, server, capsys, tmp_path, data_dir):
    """Switch to an SDXL model for one request and through /options; the model's own size where the request
    gives none; the same pixels as `sdlab generate` on the same folder."""
    body = {"prompt": "a red cube", "negative_prompt": "blurry", "seed": 5, "steps": 3, "cfg_scale": 4.0,
            "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "tiny-xl"}}  # fmt: skip
    made = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert made.status_code == 200, made.text
    info = json.loads(made.json()["info"])
    assert info["sd_model_name"] == "tiny-xl" and (info["width"], info["height"]) == (32, 32)
    image = PIL.Image.open(io.BytesIO(base64.b64decode(made.json()["images"][0])))
    folder = data_dir / "models" / "Stable-diffusion" / "tiny-xl"
    cli = cli_image(capsys, tmp_path, "xl", "a red cube", "--negative-prompt", "blurry", "--seed", 5, "--steps", 3,
                    "--cfg", 4.0, "--scheduler", "euler", "--model", folder)  # fmt: skip
    assert np.array_equal(np.asarray(image.convert("RGB")), cli)
    api.set_options({"sd_model_checkpoint": "tiny-xl"})
    try:
        assert (
            api.txt2img(prompt="a cat", seed=3, steps=2, width=32, height=32).info["sd_model_name"]
            == "tiny-xl"
        )
    finally:
        api.util_set_model("digits")


def test_setting_the_model_png_info_and_lora_tags(api, server):
    api.util_set_model("tiny")
    try:
        assert api.util_get_current_model().startswith("tiny")
        tiny = api.txt2img(prompt="a cat", seed=3, steps=3, width=32, height=32)
        assert tiny.info["sd_model_name"] == "tiny"
        styled = api.txt2img(prompt="a cat <lora:style:1>", seed=3, steps=3, width=32, height=32)
        again = api.txt2img(prompt="a cat", seed=3, steps=3, width=32, height=32)
        assert not np.array_equal(np.asarray(styled.images[0]), np.asarray(tiny.images[0]))
        assert np.array_equal(np.asarray(again.images[0]), np.asarray(tiny.images[0]))
    finally:
        api.util_set_model("digits")
    # override_settings switches the model for one request only
    one = api.txt2img(
        prompt="a cat",
        seed=3,
        steps=3,
        width=32,
        height=32,
        override_settings={"sd_model_checkpoint": "tiny"},
    )
    assert one.info["sd_model_name"] == "tiny" and api.util_get_current_model().startswith("digits")

    made = api.txt2img(**DIGIT)
    info = api.png_info(made.images[0])
    assert info.info == made.info["infotexts"][0]
    # a JPEG or WebP as A1111 saves them: the infotext in the EXIF UserComment (issue 21; 422 before)
    for fmt in ("JPEG", "WEBP"):
        from sdlab.images import image_bytes

        data = image_bytes(made.images[0], fmt, parameters=made.info["infotexts"][0])
        reply = requests.post(
            f"{server}/sdapi/v1/png-info", json={"image": base64.b64encode(data).decode()}, timeout=30
        )
        assert reply.status_code == 200 and reply.json()["info"] == made.info["infotexts"][0], fmt
    assert info.parameters["Seed"] == "11" and info.parameters["Sampler"] == "DPM++ 2M"
    assert json.loads(info.json["items"]["sdlab"])["model"] == "digits"

    names = {s["name"] for s in api.get_samplers()}
    assert {"Euler a", "DDIM", "PLMS", "LMS", "DPM++ 2M"} <= names
    assert [m["model_name"] for m in api.get_sd_models()] == ["digits", "tiny", "tiny-xl"]
    assert [lora["name"] for lora in api.get_loras()] == ["style"]
    assert api.get_memory()["ram"]["total"] > 0
    response = requests.post(f"{server}/sdapi/v1/txt2img", json={**DIGIT, "sampler_name": "Euler Fancy"})
    assert response.status_code == 422 and "unknown sampler 'Euler Fancy'" in response.json()["detail"]
    # sdlab's deep_cache field: recorded in the infotext as A1111 extensions record theirs, echoed back
    cached = requests.post(f"{server}/sdapi/v1/txt2img", json={**DIGIT, "deep_cache": 2}).json()
    info = json.loads(cached["info"])
    assert info["extra_generation_params"]["Deep cache"] == 2 and "Deep cache: 2" in info["infotexts"][0]
    assert cached["parameters"]["deep_cache"] == 2
    whole = requests.post(f"{server}/sdapi/v1/txt2img", json={**DIGIT, "deep_cache": 1}).json()
    # at settings of one's own the cache is off anyway: the infotext need not say so
    assert "Deep cache" not in json.loads(whole["info"])["infotexts"][0]
    assert whole["images"] != cached["images"]
    # the digits model's recommendation is echoed; its settings given explicitly are still its package
    from sdlab.loading import DEFAULT_MODEL

    recommended = json.loads((DEFAULT_MODEL / "sdlab.json").read_text())["sampling"]
    package = dict(prompt=DIGIT["prompt"], seed=11)
    model_default = requests.post(f"{server}/sdapi/v1/txt2img", json=package).json()
    assert model_default["parameters"]["deep_cache"] == recommended["deep_cache"]
    assert model_default["parameters"]["steps"] == recommended["num_inference_steps"]
    explicit = requests.post(
        f"{server}/sdapi/v1/txt2img",
        json={
            **package,
            "steps": recommended["num_inference_steps"],
            "cfg_scale": recommended["guidance_scale"],
        },
    ).json()
    assert explicit["images"] == model_default["images"]
    # it recommends no cache, so asking for none at its own settings is its default and goes unsaid (a model
    # that recommends one has "Deep cache: 1" said, for A1111 clients re-posting the infotext: test_deep_cache.py)
    assert recommended["deep_cache"] == 1
    off = requests.post(f"{server}/sdapi/v1/txt2img", json={**package, "deep_cache": 1}).json()
    assert (
        "Deep cache" not in json.loads(off["info"])["infotexts"][0]
        and off["images"] == model_default["images"]
    )
    departed = requests.post(f"{server}/sdapi/v1/txt2img", json={**package, "steps": 7}).json()
    assert departed["parameters"]["deep_cache"] == 1  # steps of one's own: the tuned cache is dropped
    response = requests.post(f"{server}/sdapi/v1/txt2img", json={**DIGIT, "deep_cache": True})
    assert response.status_code == 422
    response = requests.post(f"{server}/sdapi/v1/txt2img", json={**DIGIT, "deep_cache": 0})
    assert response.status_code == 422 and "deep_cache (--deep-cache) must be" in response.json()["detail"]


def test_clip_skip_and_ensd_apply_per_request_and_for_every_request(server, capsys, tmp_path):
    """Issue 21: A1111's CLIP_stop_at_last_layers and eta_noise_seed_delta change the image (they were listed
    as ignored): the CLI's --clip-skip 1 --ensd 31337 pixels, in the infotext A1111 writes; and base64 with
    line breaks (`base64.encodebytes`, as A1111 reads it) is an image, not a 422."""
    body = {**DIGIT, "sampler_name": "Euler a"}
    options = {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}
    expected = cli_image(capsys, tmp_path, "skip", *cli_args(DIGIT), "--scheduler", "euler_a", "--clip-skip", "1",
                         "--ensd", "31337")  # fmt: skip
    plain = cli_image(capsys, tmp_path, "plain", *cli_args(DIGIT), "--scheduler", "euler_a")
    assert not np.array_equal(expected, plain)

    def txt2img(extra: dict) -> tuple[np.ndarray, dict]:
        reply = requests.post(f"{server}/sdapi/v1/txt2img", json={**body, **extra}, timeout=120)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        image = PIL.Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).convert("RGB")
        return np.asarray(image), json.loads(data["info"])

    image, info = txt2img({"override_settings": options})
    assert np.array_equal(image, expected) and info["ignored"] == {} and info["clip_skip"] == 2
    assert "Clip skip: 2" in info["infotexts"][0] and "ENSD: 31337" in info["infotexts"][0]
    assert requests.post(f"{server}/sdapi/v1/options", json=options, timeout=30).json()["ignored"] == {}
    try:
        assert requests.get(f"{server}/sdapi/v1/options", timeout=30).json()["CLIP_stop_at_last_layers"] == 2
        image, _ = txt2img({})
        assert np.array_equal(image, expected)
        image, _ = txt2img({"override_settings": {"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0}})
        assert np.array_equal(image, plain)  # a request's own setting wins
    finally:
        requests.post(f"{server}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0},
                      timeout=30)  # fmt: skip
    # A1111 leaves SDXL's encoders alone whatever CLIP_stop_at_last_layers says: so does sdlab
    xl = {"sd_model_checkpoint": "tiny-xl"}
    plain_xl, _ = txt2img({"override_settings": xl})
    skipped_xl, _ = txt2img({"override_settings": {**xl, "CLIP_stop_at_last_layers": 3}})
    assert np.array_equal(plain_xl, skipped_xl)
    bad = requests.post(
        f"{server}/sdapi/v1/txt2img",
        json={**body, "override_settings": {"CLIP_stop_at_last_layers": 0}},
        timeout=30,
    )
    assert bad.status_code == 422 and "CLIP_stop_at_last_layers must be a whole number from 1" in bad.text

    png = io.BytesIO()
    PIL.Image.fromarray(plain).save(png, format="PNG")
    wrapped = base64.encodebytes(png.getvalue()).decode()  # a line break every 76 characters
    assert "\n" in wrapped
    reply = requests.post(f"{server}/sdapi/v1/img2img", json={**body, "init_images": [wrapped]}, timeout=120)
    assert reply.status_code == 200, reply.text


def test_samples_format_encodes_responses_as_a1111_does(server):
    """A1111's `samples_format` option: response images as JPEG or WebP with the infotext in their EXIF
    UserComment (what its API returns), PNG again when set back; an unknown format is one sentence."""
    from sdlab.images import read_image_text

    options = f"{server}/sdapi/v1/options"
    try:
        for fmt, magic in (("webp", b"RIFF"), ("jpg", b"\xff\xd8")):
            assert requests.post(options, json={"samples_format": fmt}, timeout=30).json()["ignored"] == {}
            assert requests.get(options, timeout=30).json()["samples_format"] == fmt
            data = requests.post(f"{server}/sdapi/v1/txt2img", json=DIGIT, timeout=120).json()
            image = base64.b64decode(data["images"][0])
            assert image.startswith(magic)
            assert read_image_text(image) == {"parameters": json.loads(data["info"])["infotexts"][0]}
    finally:
        requests.post(options, json={"samples_format": "png"}, timeout=30)
    data = requests.post(f"{server}/sdapi/v1/txt2img", json=DIGIT, timeout=120).json()
    assert base64.b64decode(data["images"][0]).startswith(b"\x89PNG")
    bad = requests.post(options, json={"samples_format": "gif"}, timeout=30)
    assert bad.status_code == 422 and "samples_format must be one of png, jpg, jpeg, webp" in bad.text


def test_the_hires_fix_through_webuiapi_equals_the_cli(api, server, capsys, tmp_path):
    """webuiapi's txt2img with enable_hr (it sends every hr_ field with A1111's defaults): the image the CLI's
    --hires-* flags make; /upscalers and /latent-upscale-modes list what hr_upscaler takes."""
    result = api.txt2img(**DIGIT, enable_hr=True, hr_scale=2, hr_upscaler="Latent (nearest-exact)",
                         hr_second_pass_steps=3, denoising_strength=0.4)  # fmt: skip
    assert result.info["ignored"] == {} and result.images[0].size == (64, 64)
    assert "Hires upscaler: Latent (nearest-exact)" in result.info["infotexts"][0]
    cli = cli_image(capsys, tmp_path, "hires", *cli_args(DIGIT), "--scheduler", "dpmpp_2m", "--hires-scale", 2,
                    "--hires-upscaler", "Latent (nearest-exact)", "--hires-steps", 3, "--hires-strength", 0.4)  # fmt: skip
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), cli)
    assert [u["name"] for u in requests.get(f"{server}/sdapi/v1/upscalers", timeout=30).json()] == [
        "None", "Lanczos", "Nearest"
    ]  # fmt: skip
    modes = requests.get(f"{server}/sdapi/v1/latent-upscale-modes", timeout=30).json()
    assert modes[0] == {"name": "Latent"} and len(modes) == 6
    bad = requests.post(f"{server}/sdapi/v1/txt2img", json={**DIGIT, "enable_hr": True, "hr_upscaler": "4x-Ultra"},
                        timeout=60)  # fmt: skip
    assert bad.status_code == 422 and "unknown hr_upscaler '4x-Ultra'" in bad.text


def test_options_are_all_or_nothing(api, server):
    """Issue 22: a POST /options answered 422 changes nothing (it used to switch the model first)."""
    options = f"{server}/sdapi/v1/options"
    before = requests.get(options, timeout=30).json()
    bad = requests.post(
        options, json={"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 0}, timeout=30
    )
    assert bad.status_code == 422 and "CLIP_stop_at_last_layers must be a whole number from 1" in bad.text
    assert requests.get(options, timeout=30).json() == before
    unknown = requests.post(
        options, json={"samples_format": "webp", "sd_model_checkpoint": "nope"}, timeout=30
    )
    assert unknown.status_code == 422 and "unknown model 'nope'" in unknown.text
    assert requests.get(options, timeout=30).json() == before


def test_eight_concurrent_clients_get_correct_images_and_interrupt_stops_within_a_step(api, server):
    requests_ = [{**DIGIT, "seed": 100 + i, "prompt": f"a handwritten digit {i}"} for i in range(8)]
    long = {**DIGIT, "steps": 30, "width": 128, "height": 128, "seed": 5}

    def send(body):
        r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    previews = []

    def interrupt_the_long_one():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progress = api.get_progress()
            state = progress["state"]
            if state["sampling_steps"] == 30 and state["sampling_step"] >= 2:
                api.interrupt()
                previews.append(progress["current_image"])
                return
            time.sleep(0.005)

    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(send, body) for body in [*requests_[:4], long, *requests_[4:]]]
        threading.Thread(target=interrupt_the_long_one, daemon=True).start()
        results = [f.result() for f in futures]
    preview = PIL.Image.open(io.BytesIO(base64.b64decode(previews[0])))
    assert preview.size == (128, 128)  # the running job's latents, previewed at the image's size
    interrupted = json.loads(results[4]["info"])["interrupted"]
    assert interrupted is not None, "the 30-step request was not interrupted"
    assert interrupted["stopped_at_step"] - interrupted["received_at_step"] <= 1
    assert interrupted["stopped_at_step"] < 30
    for body, result in zip(requests_, results[:4] + results[5:], strict=True):
        alone = send(body)
        assert result["images"] == alone["images"]  # same PNG bytes: same pixels, same metadata
        assert json.loads(result["info"])["interrupted"] is None


def _b64_png(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
