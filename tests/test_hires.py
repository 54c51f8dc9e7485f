"""The hires fix (issue 21, item 3): A1111's two-pass txt2img, against diffusers' pipelines as the oracle,
A1111's size and step arithmetic, its infotext, and its API fields."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL.PngImagePlugin import PngInfo

from sdlab.cli.main import main
from sdlab.errors import InputError
from sdlab.images import read_png_text
from sdlab.sampling.hires import (
    LATENT_UPSCALE_MODES,
    HiresParams,
    generate_hires,
    second_pass_schedule,
    target_size,
)
from sdlab.sampling.latents import start_step
from sdlab.sampling.params import SamplingParams
from sdlab.sampling.schedulers import make_scheduler
from sdlab.server.a1111 import Txt2ImgRequest, to_request

PROMPTS = ["a red cube on a table", "a photo of a cat"]


def diffusers_pipe(cls, pipe, scheduler):
    ref = cls(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=make_scheduler(scheduler, pipe.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    return ref


def generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize(
    ("width", "height", "hires", "expected"),
    [
        (512, 512, dict(hr_scale=2.0), (1024, 1024, 0, 0)),
        (512, 768, dict(hr_scale=1.5), (768, 1152, 0, 0)),
        (512, 512, dict(hr_scale=1.3), (664, 664, 0, 0)),  # int(665.6) = 665, on the latent grid: 664
        (512, 768, dict(hr_resize_x=1024), (1024, 1536, 0, 0)),
        (512, 768, dict(hr_resize_y=1024), (680, 1024, 0, 0)),  # 1024 * 512 // 768 = 682 -> 680
        (512, 512, dict(hr_resize_x=1024, hr_resize_y=768), (1024, 1024, 0, 256)),  # covers, crops 256 rows
        (768, 512, dict(hr_resize_x=1024, hr_resize_y=1024), (1536, 1024, 512, 0)),
    ],
)
def test_target_size_is_a1111s_calculate_target_resolution(width, height, hires, expected):
    assert target_size(width, height, HiresParams(**hires)) == expected


def test_the_second_pass_runs_exactly_the_hires_steps_of_a1111s_longer_schedule():
    """A1111's `setup_img2img_steps` with steps given: a schedule of int(N / min(d, 0.999)) steps, the last N
    run. For every N and d, diffusers' strength arithmetic (`start_step`) then runs exactly N steps."""
    for steps in range(1, 80):
        for strength in np.linspace(0.01, 1.0, 100):
            total, s = second_pass_schedule(steps, float(strength))
            assert total == max(int(steps / min(float(strength), 0.999)), steps)
            assert total - start_step(total, s) == steps, (steps, strength)
    assert second_pass_schedule(20, 0.7) == (28, pytest.approx(20.5 / 28))  # A1111: sigmas[8:], 20 steps


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_latent_hires_equals_diffusers_txt2img_then_img2img_on_the_upscaled_latents(tiny, scheduler):
    """Hires fix with A1111's "Latent" upscaler = diffusers' txt2img (latents out), A1111's interpolation of the
    latents, then diffusers' img2img from those latents on the same per-image seeds, the schedule of
    `second_pass_schedule`; and the second pass runs exactly the hires steps."""
    kwargs = dict(prompt=PROMPTS, negative_prompt=["blurry", ""], guidance_scale=5.0, num_inference_steps=5)
    hires = HiresParams(hr_scale=2.0, hr_second_pass_steps=3, hr_denoising_strength=0.6).hiresfix()
    steps = []
    ours = generate_hires(
        tiny, SamplingParams(**kwargs, scheduler=scheduler, seed=11, height=32, width=32), hires,
        callback=lambda i, total, t, x: steps.append((i, total)),
    )  # fmt: skip
    assert steps == [(i, 8) for i in range(8)]  # 5 first-pass steps, then exactly 3
    first = diffusers_pipe(StableDiffusionPipeline, tiny, scheduler)(
        **kwargs, height=32, width=32, generator=generators(11, 2), output_type="latent"
    ).images
    up = torch.nn.functional.interpolate(first, scale_factor=2, mode="bilinear", antialias=False)
    total, strength = second_pass_schedule(3, 0.6)
    theirs = diffusers_pipe(StableDiffusionImg2ImgPipeline, tiny, scheduler)(
        **{**kwargs, "num_inference_steps": total}, image=up, strength=strength, generator=generators(11, 2),
        output_type="pt",
    ).images  # fmt: skip
    assert ours.pixels.shape == (2, 3, 64, 64)
    assert (ours.pixels - theirs).abs().max() < 1e-4
    assert ours.unet_evaluations == 2 * (5 + 3)


def test_pixel_hires_equals_diffusers_img2img_of_the_lanczos_upscaled_images(tiny):
    """ "Lanczos" (and "None"): the first pass's 8-bit images resized with PIL's Lanczos to the hires size, then
    diffusers' img2img of those images; "Nearest" resizes with nearest neighbours and differs."""
    kwargs = dict(prompt=PROMPTS, guidance_scale=4.0, num_inference_steps=4)
    hires = HiresParams(hr_scale=1.5, hr_upscaler="Lanczos", hr_denoising_strength=0.5).hiresfix()
    ours = generate_hires(
        tiny, SamplingParams(**kwargs, scheduler="euler", seed=5, height=32, width=32), hires
    )
    first = diffusers_pipe(StableDiffusionPipeline, tiny, "euler")(
        **kwargs, height=32, width=32, generator=generators(5, 2), output_type="pil"
    ).images
    big = [image.resize((48, 48), PIL.Image.Resampling.LANCZOS) for image in first]
    total, strength = second_pass_schedule(4, 0.5)
    theirs = diffusers_pipe(StableDiffusionImg2ImgPipeline, tiny, "euler")(
        **{**kwargs, "num_inference_steps": total}, image=big, strength=strength, generator=generators(5, 2),
        output_type="pt",
    ).images  # fmt: skip
    assert ours.pixels.shape == (2, 3, 48, 48)
    assert (ours.pixels - theirs).abs().max() < 1e-4
    none = generate_hires(tiny, SamplingParams(**kwargs, scheduler="euler", seed=5, height=32, width=32),
                          HiresParams(hr_scale=1.5, hr_upscaler="None", hr_denoising_strength=0.5))  # fmt: skip
    assert torch.equal(none.pixels, ours.pixels)
    nearest = generate_hires(tiny, SamplingParams(**kwargs, scheduler="euler", seed=5, height=32, width=32),
                             HiresParams(hr_scale=1.5, hr_upscaler="Nearest", hr_denoising_strength=0.5))  # fmt: skip
    assert not torch.equal(nearest.pixels, ours.pixels)


def test_resize_to_another_aspect_crops_the_upscaled_latents_in_the_middle(tiny):
    """hr_resize_x and hr_resize_y of another aspect: the latents are upscaled to cover them and cut, half on
    each side (A1111's truncate_x/y); every latent mode of A1111's table gives that size."""
    params = SamplingParams("a cat", scheduler="euler", num_inference_steps=3, seed=2, height=32, width=32)
    for mode in LATENT_UPSCALE_MODES:
        hires = HiresParams(hr_resize_x=64, hr_resize_y=48, hr_upscaler=mode, hr_denoising_strength=0.5)
        result = generate_hires(tiny, params, hires)
        assert result.pixels.shape == (1, 3, 48, 64), mode
        assert (result.params.height, result.params.width) == (32, 32)  # the recipe keeps the first pass's


def test_hires_prompt_replaces_the_prompt_in_the_second_pass_only(tiny):
    params = SamplingParams("a cat", scheduler="euler", num_inference_steps=3, seed=2, height=32, width=32)
    same = generate_hires(tiny, params, HiresParams(hr_scale=2.0, hr_denoising_strength=0.5))
    other = generate_hires(
        tiny, params, HiresParams(hr_scale=2.0, hr_denoising_strength=0.5, hr_prompt="a dog")
    )
    assert not torch.equal(same.pixels, other.pixels)
    assert other.prompts == ["a cat"] and other.hires["hr_prompt"] == "a dog"


@pytest.mark.parametrize(
    ("hires", "words"),
    [
        (dict(hr_scale=0.5), "hr_scale"),
        (dict(hr_scale=2.0, hr_denoising_strength=0.0), "above 0"),
        (dict(hr_scale=2.0, hr_second_pass_steps=-1), "hr_second_pass_steps"),
        (dict(hr_scale=2.0, hr_scheduler="nope"), "unknown hr_scheduler"),
        (dict(hr_scale=8.0), "4096"),
    ],
)
def test_bad_hires_settings_get_one_sentence(tiny, hires, words):
    params = SamplingParams("a cat", num_inference_steps=2, seed=1, height=1024, width=1024)  # never drawn
    with pytest.raises(InputError, match=words):
        generate_hires(tiny, params, HiresParams(**hires).hiresfix())


def test_generate_writes_a1111s_hires_fields_and_replay_repeats_them(tmp_path, capsys):
    """The CLI's --hires-* flags: the PNG's infotext has A1111's keys (Size is the first pass's), and both the
    sdlab recipe and the A1111 text alone replay to identical pixels."""
    out = tmp_path / "hires.png"
    args = ["generate", "a handwritten digit 3", "--seed", "4", "--hires-scale", "2", "--hires-steps", "3",
            "--hires-strength", "0.45", "--hires-upscaler", "Latent (bicubic)", "--hires-sampler", "euler", "-o", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert PIL.Image.open(out).size == (64, 64)
    text = read_png_text(out)["parameters"]
    for field in ("Size: 32x32", "Denoising strength: 0.45", "Hires upscale: 2.0", "Hires steps: 3",
                  "Hires upscaler: Latent (bicubic)", "Hires sampler: Euler"):  # fmt: skip
        assert field in text, text
    assert main(["replay", str(out)]) == 0
    assert "identical pixels" in capsys.readouterr().out
    a1111 = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", text)
    PIL.Image.open(out).save(a1111, pnginfo=info)
    assert main(["replay", str(a1111), "--model", "digits"]) == 0
    assert "identical pixels" in capsys.readouterr().out


def test_a1111_hires_infotext_with_a_second_checkpoint_or_schedule_type_is_refused_by_name(tmp_path, capsys):
    base = "a digit\nSteps: 4, Sampler: Euler, CFG scale: 3, Seed: 1, Size: 32x32, Denoising strength: 0.5, "
    for extra, words in (("Hires upscale: 2, Hires checkpoint: other", "a second model for the hires pass"),
                         ("Hires upscale: 2, Hires schedule type: Karras", "a second schedule type")):  # fmt: skip
        made = tmp_path / "a.png"
        info = PngInfo()
        info.add_text("parameters", base + extra)
        PIL.Image.new("RGB", (64, 64)).save(made, pnginfo=info)
        assert main(["replay", str(made), "--model", "digits"]) == 2
        assert words in capsys.readouterr().err


def test_the_api_maps_a1111s_hires_fields_and_reports_what_it_does_not_apply():
    request, ignored = to_request(Txt2ImgRequest(prompt="a 3", enable_hr=True, hr_resize_x=64, denoising_strength=0.4,
                                                 hr_sampler_name="Euler", hr_checkpoint_name="other.safetensors"))  # fmt: skip
    hires = request.hiresfix()
    assert (hires.hr_scale, hires.hr_resize_x, hires.hr_upscaler, hires.hr_scheduler) == (
        None,
        64,
        "Latent",
        "euler",
    )
    assert hires.hr_denoising_strength == 0.4 and request.strength is None
    assert ignored == {"hr_checkpoint_name": "other.safetensors"}
    # enable_hr off: hr_ fields and txt2img's denoising_strength change nothing, and are not reported
    request, ignored = to_request(Txt2ImgRequest(prompt="a 3", hr_scale=3.0, denoising_strength=0.7))
    assert request.hiresfix() is None and ignored == {}
    # left out: A1111's defaults (scale 2, Latent), and its UI's strength 0.7 where its API's None would fail
    hires = to_request(Txt2ImgRequest(prompt="a 3", enable_hr=True))[0].hiresfix()
    assert (hires.hr_scale, hires.hr_upscaler, hires.hr_denoising_strength) == (2.0, "Latent", 0.7)


def test_an_upscaler_model_file_is_read_only_as_safetensors_and_by_spandrel(tmp_path):
    """ESRGAN-family files come from the upscaler folder (A1111's models/ESRGAN) by name: a pickle is refused
    unless pickles are allowed; a file spandrel cannot read (or spandrel missing) is one sentence naming the file;
    an unknown name lists the built-in upscalers and the folder's models."""
    from safetensors.torch import save_file

    from sdlab.service import ModelRegistry

    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "old.pth").write_bytes(b"\x80\x02}q\x00.")
    save_file({"not.an.upscaler": torch.zeros(2)}, folder / "odd.safetensors")
    registry = ModelRegistry(upscaler_dirs=[folder], allow_pickle=False)
    assert list(registry.upscalers()) == ["odd"]  # pickles are not even listed without --allow-pickle
    with pytest.raises(
        InputError, match=r"upscaler odd.safetensors (is a model file, which needs spandrel|is not an)"
    ):
        registry.upscaler("odd")
    with pytest.raises(
        InputError, match="unknown hr_upscaler 'old'; built in: Latent, .*Nearest; models: odd"
    ):
        registry.upscaler("old")
    pickles = ModelRegistry(upscaler_dirs=[folder], allow_pickle=True)
    assert sorted(pickles.upscalers()) == ["odd", "old"]
