"""One description of how to sample: `SamplingParams`, the model's recommendation as a package, and
every front end building the same object."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdlab.errors import InputError
from sdlab.loading import DEFAULT_MODEL, load_pipeline
from sdlab.sampling.params import EVERY_STEP, PACKAGE, SamplingParams
from sdlab.sampling.schedulers import SCHEDULERS, make_scheduler

# a model's recommendation: its base settings and the approximations tuned for them
RECOMMENDED = SamplingParams(
    scheduler="unipc", num_inference_steps=6, guidance_scale=3.0, guidance_interval=(0.0, 1.5), deep_cache=2
)


def resolve(**given) -> SamplingParams:
    return SamplingParams(**given).resolve(RECOMMENDED, "pndm")


def test_left_out_or_restated_the_recommendation_applies_whole():
    for given in ({}, {"num_inference_steps": 6}, {"guidance_scale": 3.0, "scheduler": "unipc"}):
        assert resolve(**given).package() == RECOMMENDED.package()
        assert resolve(**given).timestep_spacing is None  # the model's scheduler config decides


def test_a_preset_replaces_the_models_recommendation_as_a_package():
    """A few-step model's card settings fill what the call leaves out; a call's own steps keep the rest."""
    p = resolve(preset="sdxl-lightning-4step")
    assert p.package() == dict(scheduler="euler", timestep_spacing="trailing", num_inference_steps=4,
                               guidance_scale=0.0, guidance_interval=EVERY_STEP, deep_cache=1)  # fmt: skip
    assert resolve(preset="sdxl-lightning-4step", num_inference_steps=8).package() == {
        **p.package(),
        "num_inference_steps": 8,
    }
    with pytest.raises(InputError, match="unknown preset 'lightning'; choose one of: sdxl-turbo, "):
        resolve(preset="lightning")
    spaced = SamplingParams(
        scheduler="unipc", timestep_spacing="trailing", num_inference_steps=6, deep_cache=2
    )
    assert resolve(num_inference_steps=6).deep_cache == 2
    assert SamplingParams(timestep_spacing="leading").resolve(spaced, "pndm").deep_cache == 1  # a departure


@pytest.mark.parametrize(
    "departure", [{"scheduler": "pndm"}, {"num_inference_steps": 3}, {"guidance_scale": 7.5}]
)
def test_settings_of_ones_own_drop_the_tuned_approximations(departure):
    p = resolve(**departure)
    assert p.guidance_interval == EVERY_STEP and p.deep_cache == 1
    # the rest of the base still comes from the recommendation
    for key in ("scheduler", "num_inference_steps", "guidance_scale"):
        assert getattr(p, key) == departure.get(key, getattr(RECOMMENDED, key))
    # ... unless the approximations are asked for too
    asked = resolve(**departure, deep_cache=3, guidance_interval=(0.0, 2.0))
    assert asked.deep_cache == 3 and asked.guidance_interval == (0.0, 2.0)


def test_resolving_is_idempotent_and_fills_what_a_model_without_a_recommendation_lacks():
    for given in ({}, {"guidance_scale": 5.0}, {"deep_cache": 4}, {"init_image": "x.png"}):
        once = resolve(**given)
        assert once.resolve(RECOMMENDED, "pndm") == once
    bare = SamplingParams().resolve(SamplingParams(), "pndm")
    assert (bare.scheduler, bare.num_inference_steps, bare.guidance_scale) == ("pndm", 30, 7.5)
    assert bare.guidance_interval == EVERY_STEP and bare.deep_cache == 1 and bare.strength is None
    assert resolve(init_image="x.png").strength == 0.8
    assert resolve(init_image="x.png", mask_image="m.png").strength == 1.0


def test_the_recipe_round_trips_and_a_recommendation_is_checked():
    p = resolve(prompt="a cat", guidance_rescale=0.3, height=32, width=32)
    assert SamplingParams.from_recipe({**p.recipe(), "prompt": "a cat"}) == p
    assert SamplingParams.recommendation(RECOMMENDED.to_json(), "sdlab.json") == RECOMMENDED
    with pytest.raises(InputError, match="sdlab.json: unknown sampling setting 'steps'"):
        SamplingParams.recommendation({"steps": 6}, "sdlab.json")
    with pytest.raises(InputError, match="sdlab.json: deep_cache"):
        SamplingParams.recommendation({"deep_cache": 0}, "sdlab.json")


def test_every_front_end_builds_the_one_object():
    """The CLI's options and the request are `SamplingParams`; the API, the prompts file and the X/Y plot
    map onto its fields by the names written on them."""
    from sdlab.cli.options import EvalOptions, GenerateOptions
    from sdlab.lab.xyplot import AXES
    from sdlab.service.prompts_file import KEYS
    from sdlab.service.request import GenerationRequest, a1111_fields

    assert issubclass(GenerateOptions, GenerationRequest) and issubclass(GenerationRequest, SamplingParams)
    sampling = {f.name: f for f in dataclasses.fields(SamplingParams)}
    for name in PACKAGE:  # eval's flags are the very same fields (help, default, names)
        assert EvalOptions.__dataclass_fields__[name].metadata == sampling[name].metadata
    assert (
        a1111_fields()["steps"] == "num_inference_steps" and a1111_fields()["cfg_scale"] == "guidance_scale"
    )
    assert KEYS["deep_cache"][0] == "deep_cache" and KEYS["n_iter"][0] == "batch_count"
    assert AXES["Deep cache"][0] == "deep_cache" and AXES["Steps"][0] == "num_inference_steps"


@pytest.fixture(scope="module")
def digits_in_diffusers():
    pipe = StableDiffusionPipeline.from_pretrained(
        DEFAULT_MODEL, safety_checker=None, requires_safety_checker=False, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def digits():
    return load_pipeline(device="cpu", dtype="float32")


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_at_diffusers_settings_the_shipped_model_equals_diffusers_pixel_for_pixel(
    digits, digits_in_diffusers, scheduler
):
    """Sampler, steps and CFG of one's own: the model's deep cache and guidance interval, tuned for its own
    settings, are left out, and the image is diffusers' own."""
    prompts, steps, seed = ["a handwritten digit 3", "a handwritten digit 8"], 5, 21
    ours = digits.generate(
        prompts, scheduler=scheduler, num_inference_steps=steps, guidance_scale=7.5, seed=seed
    )
    assert ours.params.deep_cache == 1 and ours.params.guidance_interval == EVERY_STEP
    digits_in_diffusers.scheduler = make_scheduler(scheduler, digits.scheduler_config)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    theirs = digits_in_diffusers(
        prompts, num_inference_steps=steps, guidance_scale=7.5, generator=generators, output_type="pil"
    ).images
    for a, b in zip(ours.images, theirs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
