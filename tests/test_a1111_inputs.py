"""What A1111 users bring (issue 21): infotext fields that change the image, applied or refused by name."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from PIL.PngImagePlugin import PngInfo

from sdlab.cli.main import main
from sdlab.errors import InputError
from sdlab.images import read_png_text
from sdlab.loading import load_pipeline
from sdlab.sampling.loop import generate

A1111_TEXT = (
    "a handwritten digit 3\nNegative prompt: thin\n"
    "Steps: 6, Sampler: Euler a, CFG scale: 2.5, Seed: 9, Size: 32x32, Model: digits, Clip skip: 2, ENSD: 31337"
)


def test_an_a1111_png_with_clip_skip_and_ensd_replays_them_and_keeps_them(tmp_path, capsys):
    """A PNG as A1111 saves it ("Clip skip: 2", "ENSD: 31337" in its parameters) replays with both applied,
    and the new PNG writes both again (before, both were dropped: the pixels of Clip skip 1)."""
    made = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    PIL.Image.new("RGB", (32, 32)).save(made, pnginfo=info)
    again = tmp_path / "again.png"
    assert main(["replay", str(made), "--model", "digits", "-o", str(again)]) == 0, capsys.readouterr().err
    text = read_png_text(again)["parameters"]
    assert "Clip skip: 2" in text and "ENSD: 31337" in text
    pipe = load_pipeline(device="cpu", dtype="float32")
    kwargs = dict(negative_prompt="thin", num_inference_steps=6, scheduler="euler_a", guidance_scale=2.5, seed=9,
                  height=32, width=32)  # fmt: skip
    expected = generate(pipe, "a handwritten digit 3", clip_skip=1, eta_noise_seed_delta=31337, **kwargs)
    assert np.array_equal(np.asarray(PIL.Image.open(again).convert("RGB")), np.asarray(expected.images[0]))
    plain = generate(pipe, "a handwritten digit 3", **kwargs)
    assert not torch.equal(plain.pixels, expected.pixels)


def test_ensd_moves_only_the_noise_a_sampler_adds_at_its_steps():
    """A1111's eta noise seed delta: the initial noise stays the seed's; an ancestral sampler's step noise
    comes from seed + ENSD; a deterministic sampler is unchanged."""
    pipe = load_pipeline(device="cpu", dtype="float32")
    kwargs = dict(num_inference_steps=5, guidance_scale=2.0, seed=3)
    for scheduler, changes in (("euler", False), ("ddim", False), ("euler_a", True)):
        plain = generate(pipe, "a handwritten digit 5", scheduler=scheduler, **kwargs).pixels
        ensd = generate(
            pipe, "a handwritten digit 5", scheduler=scheduler, eta_noise_seed_delta=31337, **kwargs
        )
        assert torch.equal(plain, ensd.pixels) != changes, scheduler


def test_jpeg_and_webp_parameters_are_a1111s_exif_user_comment(tmp_path, capsys):
    """Issue 21: A1111 saves JPEG and WebP with the infotext in the EXIF UserComment (piexif's "UNICODE"
    encoding). sdlab reads such files (png-info, replay) and writes them with `-o x.jpg` / `-o x.webp`, which
    piexif, A1111's reader, reads back."""
    import piexif
    import piexif.helper

    from sdlab.images import read_image_text

    for suffix in ("jpg", "webp"):
        # as A1111 writes it (modules/images.py: piexif.dump + UserComment.dump(..., encoding="unicode"))
        made = tmp_path / f"a1111.{suffix}"
        exif = piexif.dump(
            {
                "Exif": {
                    piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(A1111_TEXT, encoding="unicode")
                }
            }
        )
        PIL.Image.new("RGB", (32, 32)).save(made, exif=exif, quality=90)
        assert read_image_text(made) == {"parameters": A1111_TEXT}
        again = tmp_path / f"again.{suffix}"
        assert main(["replay", str(made), "--model", "digits", "-o", str(again)]) == 0, (
            capsys.readouterr().err
        )
        comment = piexif.load(PIL.Image.open(again).info["exif"])["Exif"][piexif.ExifIFD.UserComment]
        written = piexif.helper.UserComment.load(comment)
        assert written.startswith("a handwritten digit 3\nNegative prompt: thin\nSteps: 6, Sampler: Euler a")
        assert "Clip skip: 2" in written and read_image_text(again) == {"parameters": written}
    assert read_image_text(tmp_path / "again.jpg") != {}
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "bare.jpg")
    assert read_image_text(tmp_path / "bare.jpg") == {}


@pytest.mark.parametrize(
    ("field", "feature"),
    [("Hires checkpoint: other, Hires upscale: 2", "a second model for the hires pass"), ("Variation seed: 5, Variation seed strength: 0.3", "variation seeds"),
     ("Face restoration: CodeFormer", "face restoration"), ("Eta: 0.67", "an ancestral eta"),
     ("Token merging ratio: 0.5", "token merging"), ("Noise multiplier: 0.9", "a noise multiplier")],
)  # fmt: skip
def test_an_infotext_field_that_changes_the_image_is_applied_or_refused_by_name(
    tmp_path, capsys, field, feature
):
    """Issue 21: a field sdlab does not apply is never dropped silently: replay names it in one sentence."""
    made = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT + ", " + field)
    PIL.Image.new("RGB", (32, 32)).save(made, pnginfo=info)
    assert main(["replay", str(made), "--model", "digits", "-o", str(tmp_path / "again.png")]) == 2
    err = capsys.readouterr().err
    key = field.split(":")[0]
    assert f"'{key}" in err and feature in err and "Traceback" not in err


def test_neutral_values_and_ddim_eta_are_read_not_refused(tmp_path, capsys):
    made = tmp_path / "a1111.png"
    info = PngInfo()
    text = (
        A1111_TEXT.replace("Sampler: Euler a", "Sampler: DDIM")
        + ", Eta DDIM: 0.5, Noise multiplier: 1, Eta: 1"
    )
    info.add_text("parameters", text)
    PIL.Image.new("RGB", (32, 32)).save(made, pnginfo=info)
    again = tmp_path / "again.png"
    assert main(["replay", str(made), "--model", "digits", "-o", str(again)]) == 0, capsys.readouterr().err
    assert "Eta DDIM: 0.5" in read_png_text(again)["parameters"]


@pytest.mark.parametrize(
    ("sampler", "schedule"), [("Euler", "Exponential"), ("DPM++ 2M", "Beta"), ("Euler", "Karras")]
)
def test_sigma_schedule_types_equal_diffusers_and_round_trip_the_infotext(tiny, tmp_path, sampler, schedule):
    """A1111 1.10's Exponential, Beta (and Karras on any sampler that walks sigmas) are diffusers'
    use_*_sigmas: the same pixels as diffusers' pipeline with the scheduler so configured, written as
    `Schedule type: NAME` and read back."""
    from diffusers import StableDiffusionPipeline

    from sdlab.outputs import read_recipe, save_result
    from sdlab.sampling.schedulers import make_scheduler, resolve_sampler, schedule_settings

    name = resolve_sampler(sampler, schedule)
    settings = schedule_settings(schedule, name)
    ours = generate(tiny, "a cat", scheduler=name, num_inference_steps=4, guidance_scale=5.0, seed=3, height=32,
                    width=32, **settings)  # fmt: skip
    sched = make_scheduler(name, tiny.scheduler_config, sigma_schedule=settings["sigma_schedule"])
    assert getattr(sched.config, f"use_{schedule.lower()}_sigmas")
    ref = StableDiffusionPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
                                  scheduler=sched, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    theirs = ref("a cat", num_inference_steps=4, guidance_scale=5.0, height=32, width=32, output_type="pt",
                 generator=[torch.Generator().manual_seed(3)]).images  # fmt: skip
    assert (ours.pixels - theirs).abs().mean() < 1e-4
    plain = generate(
        tiny, "a cat", scheduler=name, num_inference_steps=4, guidance_scale=5.0, seed=3, height=32, width=32
    )
    assert not torch.equal(plain.pixels, ours.pixels)
    (path,) = save_result(ours, tmp_path / "out.png", tiny)
    assert f"Sampler: {sampler}, Schedule type: {schedule}" in read_png_text(path)["parameters"]
    recipe = read_recipe(path)
    assert recipe["scheduler"] == name and recipe.get("sigma_schedule") == settings["sigma_schedule"]


def test_a_sigma_schedule_on_a_sampler_that_has_none_is_one_sentence(tiny):
    from sdlab.errors import InputError

    with pytest.raises(
        InputError,
        match="sampler 'DDIM' has no Exponential schedule; it works with: LMS, Euler, Heun",
    ):
        generate(tiny, "a cat", scheduler="ddim", sigma_schedule="exponential", num_inference_steps=2)


def test_a1111s_explicit_schedule_types_are_its_formulas():
    """A1111 1.10's `sd_schedulers.py` on SD's noise levels: Align Your Steps' 10-step table interpolated
    log-linearly (A1111's values), KL Optimal ending at sigma_min, Simple's and DDIM's whole timesteps (DDIM's
    may be one more than asked), Normal from sigma_max to sigma_min."""
    import numpy as np

    from sdlab.sampling.schedulers import explicit_schedule, make_scheduler

    sched = make_scheduler(
        "euler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    )
    ays = explicit_schedule("align_your_steps", 10, sched)["sigmas"]
    assert np.allclose(
        ays, [14.615, 6.1135, 3.5651, 2.3939, 1.65, 1.1358, 0.7425, 0.445, 0.1692, 0.029, 0], atol=1e-3
    )
    assert explicit_schedule("align_your_steps", 11, sched)["sigmas"][:2] == [14.615, 6.475]
    kl = explicit_schedule("kl_optimal", 5, sched)["sigmas"]
    assert (
        len(kl) == 6
        and kl[0] == pytest.approx(14.6146, abs=1e-3)
        and kl[-1] == pytest.approx(0.0292, abs=1e-3)
    )
    assert explicit_schedule("simple", 4, sched) == {"timesteps": [999, 749, 499, 249]}
    assert len(explicit_schedule("ddim", 30, sched)["timesteps"]) == 31  # A1111's too: ceil(999 / 33)
    normal = explicit_schedule("normal", 3, sched)["sigmas"]
    assert normal[0] == pytest.approx(14.6146, abs=1e-3) and normal[2] == pytest.approx(0.0292, abs=1e-3)


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("Euler", "KL Optimal"), ("Euler", "Align Your Steps"), ("Euler", "Normal"), ("DPM++ 2M", "Simple"),
     ("Heun", "DDIM"), ("Euler", "Polyexponential")],
)  # fmt: skip
def test_explicit_schedule_types_equal_diffusers_with_those_sigmas_and_round_trip(
    tiny, tmp_path, sampler, schedule
):
    """The other A1111 types are diffusers' pipeline called with `sigmas=` (or `timesteps=`) from A1111's
    formulas; Polyexponential at A1111's rho 1 is the exponential schedule; each is written and read back."""
    from diffusers import StableDiffusionPipeline

    from sdlab.outputs import read_recipe, save_result
    from sdlab.sampling.schedulers import (
        explicit_schedule,
        make_scheduler,
        resolve_sampler,
        schedule_settings,
    )

    name = resolve_sampler(sampler, schedule)
    settings = schedule_settings(schedule, name)
    kwargs = dict(num_inference_steps=5, guidance_scale=5.0, height=32, width=32)
    ours = generate(tiny, "a cat", scheduler=name, seed=3, **kwargs, **settings)
    sched = make_scheduler(name, tiny.scheduler_config, sigma_schedule=settings["sigma_schedule"])
    ref = StableDiffusionPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
                                  scheduler=sched, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    given = {} if schedule == "Polyexponential" else explicit_schedule(settings["sigma_schedule"], 5, sched)
    steps = given or {"num_inference_steps": 5}  # explicit sigmas or timesteps set the count themselves
    theirs = ref("a cat", guidance_scale=5.0, height=32, width=32, **steps, output_type="pt",
                 generator=[torch.Generator().manual_seed(3)]).images  # fmt: skip
    assert (ours.pixels - theirs).abs().max() < 1e-4
    (path,) = save_result(ours, tmp_path / "out.png", tiny)
    assert f"Sampler: {sampler}, Schedule type: {schedule}" in read_png_text(path)["parameters"]
    assert read_recipe(path).get("sigma_schedule") == settings["sigma_schedule"]
    with pytest.raises(InputError, match=f"sampler 'DDIM' has no {schedule} schedule"):
        generate(tiny, "a cat", scheduler="ddim", **{**kwargs, "num_inference_steps": 2}, **settings)
