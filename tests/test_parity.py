"""sdlab's sampling loop against diffusers' own pipelines on the same tiny model: the oracle.

Same components, prompts, negative prompts, guidance, scheduler and seeds (a list of CPU generators,
seed + i for image i) must give the same pixels to within 1e-4 mean absolute difference on [0, 1].
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import SD15_SCHEDULER  # noqa: E402
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from sdlab.sampling.loop import generate
from sdlab.sampling.schedulers import make_scheduler

SCHEDULERS = ["ddim", "pndm", "lms", "euler"]
PROMPTS = ["a red cube on a table", "a photo of a cat"]
NEGATIVES = ["blurry", "low quality, text"]
TOL = 1e-4


def reference(cls, pipe, scheduler: str, seed: int, **kwargs) -> torch.Tensor:
    ref = cls(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=make_scheduler(scheduler, pipe.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    rows = len(kwargs["prompt_embeds"]) if kwargs.get("prompt") is None else len(kwargs["prompt"])
    n = rows * kwargs.get("num_images_per_prompt", 1)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    return ref(**kwargs, generator=generators, output_type="pt").images


def test_scheduler_spread_is_real():
    """Guard for the tests below: different samplers must give different images, or parity proves nothing."""
    from conftest import tiny_pipeline

    pipe = tiny_pipeline()
    a = generate(
        pipe, PROMPTS[0], num_inference_steps=4, scheduler="ddim", seed=3, height=32, width=32
    ).pixels
    b = generate(
        pipe, PROMPTS[0], num_inference_steps=4, scheduler="euler", seed=3, height=32, width=32
    ).pixels
    c = generate(
        pipe, PROMPTS[0], num_inference_steps=4, scheduler="euler", seed=4, height=32, width=32
    ).pixels
    assert (a - b).abs().mean() > 10 * TOL
    assert (b - c).abs().mean() > 10 * TOL


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_txt2img_matches_diffusers(tiny, scheduler):
    kwargs = dict(prompt=PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=4, guidance_scale=6.0)
    ours = generate(
        tiny, **kwargs, height=32, width=48, scheduler=scheduler, seed=11, num_images_per_prompt=1
    )
    theirs = reference(StableDiffusionPipeline, tiny, scheduler, 11, **kwargs, height=32, width=48)
    assert ours.pixels.shape == theirs.shape == (2, 3, 32, 48)
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_txt2img_without_guidance_matches_diffusers(tiny):
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=3, guidance_scale=1.0, num_images_per_prompt=2)
    ours = generate(tiny, **kwargs, height=32, width=32, scheduler="euler", seed=5)
    theirs = reference(StableDiffusionPipeline, tiny, "euler", 5, **kwargs, height=32, width=32)
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_guidance_rescale_matches_diffusers(tiny):
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=3, guidance_scale=9.0, guidance_rescale=0.7)
    ours = generate(tiny, **kwargs, height=32, width=32, scheduler="ddim", seed=2)
    theirs = reference(StableDiffusionPipeline, tiny, "ddim", 2, **kwargs, height=32, width=32)
    plain = generate(
        tiny,
        PROMPTS[0],
        num_inference_steps=3,
        guidance_scale=9.0,
        height=32,
        width=32,
        scheduler="ddim",
        seed=2,
    )
    assert (ours.pixels - theirs).abs().mean() < TOL
    assert (ours.pixels - plain.pixels).abs().mean() > 10 * TOL


def source_image(size=(48, 32)) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def half_mask(size=(48, 32)) -> PIL.Image.Image:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, size[0] // 2 :] = 255
    return PIL.Image.fromarray(mask)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_img2img_matches_diffusers(tiny, scheduler):
    image = source_image()
    kwargs = dict(
        prompt=PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=5, guidance_scale=5.0, strength=0.6
    )
    ours = generate(tiny, **kwargs, init_image=image, scheduler=scheduler, seed=7)
    theirs = reference(StableDiffusionImg2ImgPipeline, tiny, scheduler, 7, **kwargs, image=image)
    assert ours.pixels.shape == theirs.shape
    assert (ours.pixels - theirs).abs().mean() < TOL


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("channels", [4, 9])
def test_inpaint_matches_diffusers(tiny, tiny_inpaint, scheduler, channels):
    pipe = tiny if channels == 4 else tiny_inpaint
    image, mask = source_image(), half_mask()
    # One image: diffusers' inpainting encodes a single init image with generator[0] only and repeats it,
    # so its image i > 0 differs from image i generated alone; sdlab gives each image its own generator.
    kwargs = dict(
        prompt=PROMPTS[:1], negative_prompt=NEGATIVES[:1], num_inference_steps=4, guidance_scale=5.0
    )
    ours = generate(pipe, **kwargs, init_image=image, mask_image=mask, scheduler=scheduler, seed=9)
    theirs = reference(
        StableDiffusionInpaintPipeline,
        pipe,
        scheduler,
        9,
        **kwargs,
        image=image,
        mask_image=mask,
        height=32,
        width=48,
    )
    assert ours.pixels.shape == theirs.shape
    assert (ours.pixels - theirs).abs().mean() < TOL


@pytest.mark.parametrize("channels", [4, 9])
def test_inpaint_with_strength_matches_diffusers(tiny, tiny_inpaint, channels):
    pipe = tiny if channels == 4 else tiny_inpaint
    image, mask = source_image(), half_mask()
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=5, guidance_scale=5.0, strength=0.6)
    ours = generate(pipe, **kwargs, init_image=image, mask_image=mask, scheduler="ddim", seed=4)
    theirs = reference(
        StableDiffusionInpaintPipeline,
        pipe,
        "ddim",
        4,
        **kwargs,
        image=image,
        mask_image=mask,
        height=32,
        width=48,
    )
    assert (ours.pixels - theirs).abs().mean() < TOL


# SD folders in the wild often ship PNDM's scheduler config without `clip_sample`, with `steps_offset`
# 0 or `skip_prk_steps` false. diffusers' SD pipelines correct their scheduler when they are built;
# sdlab must make the same corrections, or DDIM clips x0 to [-1, 1] (25/255 off before the fix).
OLD_CONFIG = {
    k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "steps_offset", "skip_prk_steps")
}
OLD_CONFIG["skip_prk_steps"] = False


def raw_reference(cls, pipe, scheduler: str, seed: int, **kwargs) -> torch.Tensor:
    """diffusers' pipeline given the *uncorrected* scheduler: it applies its own corrections."""
    import diffusers

    from sdlab.sampling.schedulers import scheduler_spec

    spec = scheduler_spec(scheduler)
    raw = getattr(diffusers, spec.cls).from_config({**pipe.scheduler_config, **spec.overrides})
    ref = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
              scheduler=raw, safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    rows = len(kwargs["prompt_embeds"]) if kwargs.get("prompt") is None else len(kwargs["prompt"])
    n = rows * kwargs.get("num_images_per_prompt", 1)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    return ref(**kwargs, generator=generators, output_type="pt").images


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler"])
def test_configs_missing_the_sd_corrections_match_diffusers(scheduler):
    from conftest import tiny_pipeline

    pipe = tiny_pipeline(seed=2)
    pipe.scheduler_config = dict(OLD_CONFIG)
    kwargs = dict(prompt=PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=5, guidance_scale=5.0)
    ours = generate(pipe, **kwargs, scheduler=scheduler, seed=3, height=32, width=32).pixels
    theirs = raw_reference(StableDiffusionPipeline, pipe, scheduler, 3, **kwargs, height=32, width=32)
    assert (ours - theirs).abs().mean() < TOL
    image = source_image()
    ours = generate(pipe, **kwargs, init_image=image, strength=0.6, scheduler=scheduler, seed=3).pixels
    theirs = raw_reference(
        StableDiffusionImg2ImgPipeline, pipe, scheduler, 3, **kwargs, image=image, strength=0.6
    )
    assert (ours - theirs).abs().mean() < TOL
    # diffusers' inpainting pipeline corrects steps_offset and skip_prk_steps but not clip_sample, so
    # it clips SD latents to [-1, 1] with such a config; sdlab does not (SD latents are not in that
    # range): compare the two where diffusers is consistent. One prompt: see test_inpaint_matches_diffusers.
    pipe.scheduler_config = {**OLD_CONFIG, "clip_sample": False}
    one = dict(kwargs, prompt=PROMPTS[:1], negative_prompt=NEGATIVES[:1])
    ours = generate(pipe, **one, init_image=image, mask_image=half_mask(), scheduler=scheduler, seed=3).pixels
    theirs = raw_reference(
        StableDiffusionInpaintPipeline, pipe, scheduler, 3, **one, image=image, mask_image=half_mask(),
        height=32, width=48,
    )  # fmt: skip
    assert (ours - theirs).abs().mean() < TOL


def test_an_old_unet_config_gets_the_sample_size_diffusers_gives_it(tiny_dir, tmp_path):
    """StableDiffusionPipeline's third correction: a UNet config saved by diffusers < 0.9 with a sample
    size under 64 meant 64 (a 512-pixel SD 1.x); sdlab's default image size follows it."""
    import json
    import shutil

    from sdlab.loading import load_pipeline

    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    config_file = old / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(_diffusers_version="0.8.0", sample_size=16)
    config_file.write_text(json.dumps(config))
    pipe = load_pipeline(old, device="cpu")
    assert pipe.unet.config.sample_size == 64 and pipe.default_size == 64 * pipe.vae_scale_factor
    assert load_pipeline(tiny_dir, device="cpu").unet.config.sample_size == 16  # a current config is kept


def test_a_guidance_distilled_unet_matches_diffusers_lcm_pipeline():
    """LCM UNets take the guidance scale as an embedding (`timestep_cond`), not as two passes."""
    from conftest import tiny_pipeline
    from diffusers import LatentConsistencyModelPipeline

    pipe = tiny_pipeline(seed=3, time_cond_proj_dim=32)
    ref = LatentConsistencyModelPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=make_scheduler("lcm", pipe.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    images = {}
    for scale in (1.0, 8.5):
        kwargs = dict(
            num_inference_steps=4, guidance_scale=scale, num_images_per_prompt=2, height=32, width=32
        )
        ours = generate(pipe, "a red cube", scheduler="lcm", seed=5, **kwargs).pixels
        generators = [torch.Generator("cpu").manual_seed(5 + i) for i in range(2)]
        theirs = ref("a red cube", generator=generators, output_type="pt", **kwargs).images
        assert (ours - theirs).abs().mean() < TOL
        images[scale] = ours
    assert (images[1.0] - images[8.5]).abs().mean() > 10 * TOL  # the embedding reaches the UNet


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(num_class_embeds=10), "this UNet expects class labels"),
        (dict(addition_embed_type="image"), "this UNet expects added conditioning of type .image."),
    ],
)
def test_a_unet_needing_conditioning_sdlab_does_not_give_is_refused(config, message):
    from conftest import tiny_pipeline

    from sdlab.errors import InputError

    pipe = tiny_pipeline()
    pipe.unet.register_to_config(**config)  # the check reads the config, as a loaded model's would say
    with pytest.raises(InputError, match=message):
        generate(pipe, "a cat", num_inference_steps=2, height=32, width=32, seed=0)


def test_an_lcm_lora_through_lora_and_the_lcm_scheduler_matches_diffusers(tiny, tiny_dir, tmp_path, capsys):
    """LCM-LoRA (Luo et al. 2023): a LoRA on an ordinary UNet, sampled with LCMScheduler in a few steps at
    CFG 1 (one pass per step). sdlab's CLI (`--lora FILE --scheduler lcm`) against diffusers'
    `load_lora_weights` + `LCMScheduler`, the way diffusers documents LCM-LoRA."""
    from conftest import make_lora
    from PIL import Image

    from sdlab.cli.main import main

    lora = make_lora(tiny, tmp_path / "lcm_lora.safetensors", seed=2)
    ref = StableDiffusionPipeline.from_pretrained(
        tiny_dir, safety_checker=None, requires_safety_checker=False
    )
    ref.scheduler = make_scheduler("lcm", tiny.scheduler_config)
    ref.load_lora_weights(str(lora))
    ref.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=4, guidance_scale=1.0, height=32, width=32)
    theirs = ref(PROMPTS[0], generator=[torch.Generator().manual_seed(3)], output_type="np", **kwargs).images[
        0
    ]
    common = [
        PROMPTS[0],
        "--model",
        str(tiny_dir),
        "--scheduler",
        "lcm",
        "--steps",
        "4",
        "--cfg",
        "1",
        "--seed",
        "3",
    ]
    assert main(["generate", *common, "--lora", str(lora), "-o", str(tmp_path / "lcm.png")]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "plain.png")]) == 0
    with Image.open(tmp_path / "lcm.png") as a, Image.open(tmp_path / "plain.png") as b:
        ours, plain = np.asarray(a) / 255.0, np.asarray(b) / 255.0
    assert np.abs(ours - theirs).mean() < 2 / 255  # 8-bit PNG against diffusers' floats
    assert np.abs(ours - plain).mean() > 10 * TOL  # the LoRA changed the image


def test_clip_skip_reads_an_earlier_layer_through_the_final_norm(tiny):
    """SD 1.x `clip_skip` k: hidden_states[-(k + 1)] through the final layer norm, as diffusers'
    `encode_prompt` and A1111's "Clip skip: k + 1". (diffusers 0.42's own path fails on transformers >= 5.6,
    whose CLIPTextModel has no `text_model`; the embeddings are given to it instead.)"""
    ids = tiny.tokenizer(PROMPTS[:1], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        embeds = tiny.text_encoder.final_layer_norm(hidden)
    kwargs = dict(num_inference_steps=3, guidance_scale=1.0, height=32, width=32)
    ours = generate(tiny, PROMPTS[0], **kwargs, clip_skip=1, scheduler="euler", seed=6)
    theirs = reference(StableDiffusionPipeline, tiny, "euler", 6, prompt=None, prompt_embeds=embeds, **kwargs)
    default = generate(tiny, PROMPTS[0], **kwargs, scheduler="euler", seed=6)
    assert (ours.pixels - theirs).abs().mean() < TOL
    assert (ours.pixels - default.pixels).abs().mean() > 10 * TOL


def test_vae_tiling_equals_diffusers_enable_tiling_for_txt2img_and_img2img(tiny):
    """`vae_tiling`: encoding and decoding in overlapping tiles, as diffusers' pipelines do after
    `vae.enable_tiling()` (the tiny VAE's tiles are 32 pixels: a 64-pixel image is four tiles); the model's VAE
    is left untiled afterwards, and the tiled pixels differ from the whole decode only a little."""
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=3, guidance_scale=4.0, height=64, width=64)
    ours = generate(tiny, **kwargs, scheduler="euler", seed=2, vae_tiling=True)
    assert not tiny.vae.use_tiling
    image = PIL.Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    kw = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
    tiny.vae.enable_tiling()
    try:
        theirs = reference(StableDiffusionPipeline, tiny, "euler", 2, **kwargs)
        theirs_i2i = reference(
            StableDiffusionImg2ImgPipeline, tiny, "euler", 2, **kw, image=image, strength=0.6
        )
    finally:
        tiny.vae.disable_tiling()
    assert (ours.pixels - theirs).abs().max() < 1e-4
    whole = generate(tiny, **kwargs, scheduler="euler", seed=2)
    assert (whole.pixels - ours.pixels).abs().max() > 0
    ours_i2i = generate(
        tiny, **kw, init_image=image, strength=0.6, scheduler="euler", seed=2, vae_tiling=True
    )
    assert (ours_i2i.pixels - theirs_i2i).abs().max() < 1e-4
