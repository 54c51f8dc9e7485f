"""Classifier-free guidance in a limited interval of noise levels (Kynkaenniemi et al., NeurIPS 2024):
diffusers' CFG cut-off as the oracle, one UNet pass outside the interval, recorded and replayed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.callbacks import SDCFGCutoffCallback
from test_parity import TOL, reference

from sdlab.errors import InputError
from sdlab.sampling.gradient_guidance import alpha_bar_at
from sdlab.sampling.loop import generate
from sdlab.sampling.params import SamplingParams
from sdlab.sampling.schedulers import make_scheduler

PROMPT, NEGATIVE = "a red cube on a table", "blurry"


def sigmas(pipe, scheduler: str, steps: int) -> list[float]:
    """The noise level sigma of each step of the schedule, in sampling order."""
    sched = make_scheduler(scheduler, pipe.scheduler_config)
    sched.set_timesteps(steps)
    return [math.sqrt((1 - a) / a) for a in (alpha_bar_at(sched.alphas_cumprod, t) for t in sched.timesteps)]


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_a_lower_bound_is_diffusers_cfg_cutoff(tiny, scheduler):
    """Guidance at sigma > lo is diffusers' SDCFGCutoffCallback: guided up to a step, conditional after it."""
    steps, cutoff = 5, 0  # step 0 guided; 1-4 not
    s = sigmas(tiny, scheduler, steps)
    lo = (s[cutoff] + s[cutoff + 1]) / 2
    kwargs = dict(num_inference_steps=steps, guidance_scale=9.0, height=32, width=32)
    ours = generate(
        tiny, PROMPT, NEGATIVE, **kwargs, scheduler=scheduler, seed=7, guidance_interval=(lo, None)
    )
    theirs = reference(
        StableDiffusionPipeline, tiny, scheduler, 7, prompt=[PROMPT], negative_prompt=[NEGATIVE], **kwargs,
        callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=cutoff),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )  # fmt: skip
    everywhere = generate(tiny, PROMPT, NEGATIVE, **kwargs, scheduler=scheduler, seed=7)
    assert (ours.pixels - theirs).abs().mean() < TOL
    assert (ours.pixels - everywhere.pixels).abs().mean() > 10 * TOL  # the cut-off changed the image
    assert ours.settings["unet_evaluations"] == 2 * 1 + 4 and everywhere.settings["unet_evaluations"] == 10


def test_an_interval_that_holds_no_step_is_no_guidance_and_one_that_holds_all_is_plain_cfg(tiny):
    kwargs = dict(num_inference_steps=4, height=32, width=32, scheduler="pndm", seed=3)
    unguided = generate(tiny, PROMPT, NEGATIVE, guidance_scale=1.0, **kwargs)
    empty = generate(tiny, PROMPT, NEGATIVE, guidance_scale=7.0, guidance_interval=(900, 1000), **kwargs)
    assert torch.equal(empty.pixels, unguided.pixels)  # the negative prompt acts only through guidance
    assert empty.settings["unet_evaluations"] == unguided.settings["unet_evaluations"] == 5  # PNDM: steps + 1
    plain = generate(tiny, PROMPT, NEGATIVE, guidance_scale=7.0, **kwargs)
    full = generate(tiny, PROMPT, NEGATIVE, guidance_scale=7.0, guidance_interval=(0, 1e9), **kwargs)
    assert torch.equal(full.pixels, plain.pixels) and full.settings["unet_evaluations"] == 10


def test_a_middle_interval_guides_only_the_steps_inside_it(tiny):
    s = sigmas(tiny, "ddim", 6)
    lo, hi = (s[4] + s[3]) / 2, (s[1] + s[0]) / 2  # steps 1, 2, 3
    seen = []
    result = generate(
        tiny, PROMPT, NEGATIVE, num_inference_steps=6, guidance_scale=5.0, height=32, width=32, scheduler="ddim",
        seed=1, guidance_interval=(lo, hi), observe=lambda info: seen.append(info.noise_uncond is not None),
    )  # fmt: skip
    assert seen == [False, True, True, True, False, False]
    assert result.settings["unet_evaluations"] == 9
    assert result.settings["guidance_interval"] == [lo, hi]


@pytest.mark.parametrize(
    ("interval", "message"),
    [
        ((5, 1), "0 <= LO < HI"),
        ((-1, 2), "0 <= LO < HI"),
        ((float("nan"), 2), "0 <= LO < HI"),
        ("x", "two noise levels"),
    ],
)
def test_a_bad_interval_is_one_sentence(tiny, interval, message):
    with pytest.raises(InputError, match=message):
        generate(tiny, PROMPT, num_inference_steps=2, height=32, width=32, guidance_interval=interval)


def test_the_model_recommends_an_interval_the_png_records_it_and_replay_repeats_it(tiny, tmp_path, capsys):
    from PIL import Image

    from sdlab.cli.main import main
    from sdlab.loading.folder import save_folder
    from sdlab.metadata import parse_parameters
    from sdlab.outputs import read_recipe

    tiny.recommended = SamplingParams(
        guidance_scale=6.0, guidance_interval=(0.5, None), scheduler="ddim", num_inference_steps=4
    )
    try:
        model = save_folder(tiny, tmp_path / "model")
    finally:
        tiny.recommended = SamplingParams()
    assert json.loads((model / "sdlab.json").read_text())["sampling"]["guidance_interval"] == [0.5, None]
    common = [str(model), "--steps", "4", "--seed", "2"]
    assert main(["generate", PROMPT, "--model", *common, "-o", str(tmp_path / "a.png")]) == 0
    assert (
        main(
            [
                "generate",
                PROMPT,
                "--model",
                *common,
                "-o",
                str(tmp_path / "all.png"),
                "--guidance-interval",
                "all",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "a.png") as image:
        _, _, settings = parse_parameters(image.text["parameters"])
        recipe = json.loads(image.text["sdlab"])
    assert settings["Guidance interval"] == "0.5 to inf" and settings["Sampler"] == "DDIM"
    assert recipe["guidance_interval"] == [0.5, None] and recipe["unet_evaluations"] < 8
    assert read_recipe(tmp_path / "all.png")["guidance_interval"] == [0.0, None]
    # the interval was chosen with the model's CFG: a CFG of one's own guides every step, as everywhere else
    assert main(["generate", PROMPT, "--model", *common, "--cfg", "7", "-o", str(tmp_path / "cfg.png")]) == 0
    assert read_recipe(tmp_path / "cfg.png")["guidance_interval"] == [0.0, None]
    assert main(["generate", PROMPT, "--model", *common, "--cfg", "6", "-o", str(tmp_path / "same.png")]) == 0
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "same.png") as b:
        assert a.tobytes() == b.tobytes()  # the model's own CFG, given: the same image as leaving it out
    assert main(["replay", str(tmp_path / "a.png"), "-o", str(tmp_path / "again.png")]) == 0
    with (
        Image.open(tmp_path / "a.png") as a,
        Image.open(tmp_path / "again.png") as b,
        Image.open(tmp_path / "all.png") as c,
    ):
        assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                PROMPT,
                "--model",
                *common,
                "--guidance-interval",
                "5,1",
                "-o",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "guidance_interval needs 0 <= LO < HI" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("scheduler", ["pndm", "unipc", "lms", "dpmpp_2m"])
def test_planned_evaluations_are_what_generate_spends(tiny, scheduler):
    from sdlab.sampling.guidance import planned_unet_evaluations

    for scale, interval in ((7.0, (0.0, None)), (7.0, (0.0, 1.5)), (7.0, (1.0, None)), (1.0, (0.0, None))):
        result = generate(
            tiny, PROMPT, num_inference_steps=4, guidance_scale=scale, guidance_interval=interval, height=32,
            width=32, scheduler=scheduler, seed=0,
        )  # fmt: skip
        assert (
            planned_unet_evaluations(tiny, scheduler, 4, scale, interval)
            == result.settings["unet_evaluations"]
        )


def test_the_fast_default_is_chosen_on_validation_seeds_and_reported_on_held_out_seeds():
    """The cheapest validation row meeting every target, else the best FID meeting the rest; the targets it
    misses are read from its held-out row, which may differ (selection bias)."""
    from sdlab.evaluation.sweeps import TARGETS, Sweep, choose_fast_default

    def row(stage, evals, fid_ratio, accuracy=0.995, thick=-0.2, seeds="validation", scale=None):
        meets = (
            accuracy >= TARGETS["prompt_accuracy"] and fid_ratio <= TARGETS["fid_ratio"] and thick <= -0.15
        )
        return {"stage": stage, "seeds": seeds, "scheduler": "unipc", "num_inference_steps": evals,
                "guidance_scale": scale or float(evals) + fid_ratio, "guidance_interval": [0.0, None], "deep_cache": 1,
                "unet_evaluations": evals, "fid_ratio": fid_ratio, "prompt_accuracy": accuracy,
                "thick_change": thick, "meets": meets}  # fmt: skip

    def held_out(r, fid_ratio):
        return row(r["stage"], r["unet_evaluations"], fid_ratio, seeds="held-out", scale=r["guidance_scale"])

    rows = [row(1, 6, 1.0), row(2, 10, 1.1), row(2, 8, 1.45), row(2, 8, 1.3), row(2, 7, 2.0)]
    reported = [held_out(r, 1.6) for r in rows[1:]]
    chosen, report, missed = choose_fast_default(Sweep("fast", "t", rows + reported, "x", ("y",)))
    assert chosen is rows[3] and report is reported[2] and missed == ["fid_ratio"]
    rows = [
        row(1, 6, 1.0),
        row(2, 7, 1.9),
        row(2, 9, 1.8),
        row(2, 5, 1.1, accuracy=0.97),
        row(2, 6, 1.4, thick=-0.1),
    ]
    reported = [held_out(r, 1.4) for r in rows[1:]]
    chosen, report, missed = choose_fast_default(Sweep("fast", "t", rows + reported, "x", ("y",)))
    assert chosen is rows[2] and report is reported[1] and missed == []
    assert choose_fast_default(Sweep("fast", "t", rows[3:] + reported[2:], "x", ("y",))) == (None, None, [])


def test_an_image_made_before_guidance_intervals_replays_guided_at_every_step(tiny, tmp_path):
    from sdlab.images import save_png
    from sdlab.outputs import read_recipe

    result = generate(tiny, PROMPT, num_inference_steps=2, height=32, width=32, seed=0)
    old = {k: v for k, v in result.settings.items() if k not in ("guidance_interval", "unet_evaluations")}
    save_png(result.images[0], tmp_path / "old.png", parameters="x", extra={"sdlab": json.dumps(old)})
    assert read_recipe(tmp_path / "old.png")["guidance_interval"] == [0.0, None]
