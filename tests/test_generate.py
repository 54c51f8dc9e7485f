"""Semantics of the sampling loop: seeds, guidance, strength, chaining, callbacks, bad input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from sdlab.errors import InputError
from sdlab.sampling.latents import encode_images, generators_for, start_step
from sdlab.sampling.loop import generate

ARGS = dict(num_inference_steps=3, height=32, width=32, scheduler="ddim")


def unet_calls(pipe):
    """Count UNet forward passes and the batch size of each."""
    sizes: list[int] = []
    handle = pipe.unet.register_forward_hook(lambda m, args, kwargs_out: sizes.append(args[0].shape[0]))
    return sizes, handle


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m_karras", "ddpm"])
def test_image_i_of_a_batch_equals_it_alone(tiny, scheduler):
    batch = generate(tiny, "a cat", **{**ARGS, "scheduler": scheduler}, seed=100, num_images_per_prompt=3)
    alone = generate(tiny, "a cat", **{**ARGS, "scheduler": scheduler}, seed=102)
    assert batch.seeds == [100, 101, 102]
    assert torch.allclose(batch.pixels[2], alone.pixels[0], atol=1e-5)
    assert (batch.pixels[0] - batch.pixels[2]).abs().mean() > 1e-3  # different seeds, different images


def test_img2img_batch_member_equals_it_alone(tiny):
    image = PIL.Image.new("RGB", (32, 32), (200, 30, 30))
    batch = generate(
        tiny, "a cat", init_image=image, strength=0.7, num_inference_steps=4, seed=5, num_images_per_prompt=2
    )
    alone = generate(tiny, "a cat", init_image=image, strength=0.7, num_inference_steps=4, seed=6)
    assert torch.allclose(batch.pixels[1], alone.pixels[0], atol=1e-5)


def test_same_seed_same_image_and_random_seed_recorded(tiny):
    a = generate(tiny, "a dog", **ARGS, seed=42)
    b = generate(tiny, "a dog", **ARGS, seed=42)
    assert torch.equal(a.pixels, b.pixels)
    c = generate(tiny, "a dog", **ARGS)
    again = generate(tiny, "a dog", **ARGS, seed=c.seeds[0])
    assert torch.equal(c.pixels, again.pixels)


def test_guidance_at_most_one_means_one_unet_pass_per_step(tiny):
    sizes, handle = unet_calls(tiny)
    try:
        generate(tiny, "a cat", **ARGS, guidance_scale=1.0, seed=0)
        assert sizes == [1, 1, 1]
        sizes.clear()
        generate(tiny, "a cat", **ARGS, guidance_scale=7.0, seed=0)
        assert sizes == [2, 2, 2]  # unconditional and conditional in one batch
    finally:
        handle.remove()


def test_negative_prompt_replaces_the_empty_prompt(tiny):
    base = generate(tiny, "a cat", **ARGS, seed=1)
    empty = generate(tiny, "a cat", "", **ARGS, seed=1)
    negative = generate(tiny, "a cat", "a dog", **ARGS, seed=1)
    assert torch.equal(base.pixels, empty.pixels)
    assert (base.pixels - negative.pixels).abs().mean() > 1e-3
    # without guidance the negative prompt has no branch to enter
    off = generate(tiny, "a cat", "a dog", **ARGS, guidance_scale=1.0, seed=1)
    off_plain = generate(tiny, "a cat", **ARGS, guidance_scale=1.0, seed=1)
    assert torch.equal(off.pixels, off_plain.pixels)


@pytest.mark.parametrize(
    ("steps", "strength", "expected"), [(10, 0.3, 3), (10, 0.85, 8), (10, 1.0, 10), (4, 0.5, 2)]
)
def test_strength_runs_the_last_share_of_the_schedule(tiny, steps, strength, expected):
    assert steps - start_step(steps, strength) == expected
    sizes, handle = unet_calls(tiny)
    try:
        image = PIL.Image.new("RGB", (32, 32), "white")
        generate(
            tiny,
            "a cat",
            init_image=image,
            strength=strength,
            num_inference_steps=steps,
            scheduler="ddim",
            seed=0,
        )
    finally:
        handle.remove()
    assert len(sizes) == expected


def vae_round_trip(pipe, image: PIL.Image.Image) -> torch.Tensor:
    """What the VAE makes of an image (the best any sampler could keep of it), in [0, 1]."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean
        return (pipe.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)


def test_chaining_image_and_latents(tiny):
    """A result's image and its latents are both valid init images; latents skip the VAE round trip."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from test_parity import reference

    first = generate(tiny, "a cat", **ARGS, seed=3)
    restyle = dict(num_inference_steps=4, strength=0.5, guidance_scale=7.5)
    prompt = "a cat, in the style of van gogh"
    from_image = generate(tiny, prompt, init_image=first.images[0], **restyle, scheduler="ddim", seed=4)
    from_latents = generate(tiny, prompt, init_image=first.latents, **restyle, scheduler="ddim", seed=4)
    assert from_image.pixels.shape == from_latents.pixels.shape == (1, 3, 32, 32)
    expected = reference(
        StableDiffusionImg2ImgPipeline, tiny, "ddim", 4, prompt=[prompt], image=first.latents, **restyle
    )
    assert (from_latents.pixels - expected).abs().mean() < 1e-4
    assert (from_image.pixels - from_latents.pixels).abs().mean() > 1e-3  # it did not re-encode


def test_rgba_init_image_is_an_image_not_latents(tiny):
    rgba = PIL.Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent: white after compositing
    white = PIL.Image.new("RGB", (32, 32), "white")
    a = generate(tiny, "a cat", init_image=rgba, strength=0.5, num_inference_steps=4, seed=1)
    b = generate(tiny, "a cat", init_image=white, strength=0.5, num_inference_steps=4, seed=1)
    assert torch.equal(a.pixels, b.pixels)


def test_inpainting_keeps_the_unmasked_region_with_a_4_channel_unet(tiny):
    rng = np.random.default_rng(1)
    image = PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255
    out = generate(
        tiny, "a cat", init_image=image, mask_image=PIL.Image.fromarray(mask), num_inference_steps=4, seed=2
    )
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    image_latents = encode_images(tiny.vae, x, generators_for([2]))
    # after the last step the kept half (latent columns 0-7) is exactly the image's latents
    assert torch.allclose(out.latents[..., :8], image_latents[..., :8], atol=1e-6)
    assert (out.latents[..., 8:] - image_latents[..., 8:]).abs().mean() > 0.1


def test_callback_sees_every_step(tiny):
    seen = []
    generate(
        tiny, "a cat", **ARGS, seed=0, callback=lambda i, n, t, latents: seen.append((i, n, latents.shape))
    )
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[1] == 3 for s in seen)


def test_long_prompts_reach_the_unet(tiny):
    words = " ".join(["cat"] * 80)
    a = generate(tiny, words + " red", **ARGS, seed=0)
    b = generate(tiny, words + " blue", **ARGS, seed=0)
    assert (a.pixels - b.pixels).abs().mean() > 1e-4  # tokens past 77 change the image


BAD = [
    (dict(height=31), "height must be a positive multiple of 2"),
    (dict(width=0), "width must be a positive multiple"),
    (dict(height=8192), "larger than the maximum"),
    (dict(num_inference_steps=0), "num_inference_steps (--steps) must be an integer from 1 to"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
    (dict(strength=0.5), "strength applies only to image-to-image"),
    (dict(init_image="__image__", strength=1.5), "strength must be in (0, 1]"),
    (dict(init_image="__image__", strength=0.0), "strength must be in (0, 1]"),
    (dict(init_image="__image__", strength=0.05, num_inference_steps=10), "runs no denoising step"),
    (dict(mask_image="__image__"), "a mask needs an init image"),
    (
        dict(init_image="__tiny__"),
        "the init image is 1x1 pixels; its width must be at least 2 (the VAE's factor)",
    ),
    (dict(prompt=["a", "b"], negative_prompt=["c"]), "1 negative prompts for 2 prompts"),
    (dict(scheduler="nope"), "unknown scheduler 'nope'"),
    (dict(seed=-1), "a seed must be an integer"),
    (dict(seed=2**32 + 5), "a seed must be an integer from 0 to 4294967295"),  # not silently seed 5
    (dict(seed=[4, True], num_images_per_prompt=2), "a seed must be an integer"),
    (dict(init_image=torch.zeros(1, 5, 4, 4)), "3 channels"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_one_clear_sentence(tiny, kwargs, message):
    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        if value == "__image__":
            kwargs[key] = PIL.Image.new("RGB", (32, 32))
        elif value == "__tiny__":  # diffusers rounds its side down to 0 and fails inside (issue 21)
            kwargs[key] = PIL.Image.new("RGB", (1, 1))  # the tiny model's factor is 2
    prompt = kwargs.pop("prompt", "a cat")
    kwargs.setdefault("num_inference_steps", 2)
    with pytest.raises(ValueError, match=None) as info:
        generate(tiny, prompt, **kwargs)
    assert isinstance(info.value, InputError)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_each_distinct_prompt_is_encoded_once(tiny, monkeypatch):
    """Issue 13: -n 16 with CFG ran the text encoder on 32 rows; diffusers encodes once and repeats."""
    rows = []
    forward = tiny.text_encoder.forward

    def counting(ids, *args, **kwargs):
        rows.append(ids.shape[0])
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(tiny.text_encoder, "forward", counting)
    batch = generate(
        tiny,
        "a cat",
        num_images_per_prompt=4,
        guidance_scale=5.0,
        num_inference_steps=2,
        seed=0,
        height=32,
        width=32,
    )
    assert rows == [2]  # "a cat" and the empty negative prompt, once each
    rows.clear()
    alone = generate(tiny, "a cat", guidance_scale=5.0, num_inference_steps=2, seed=2, height=32, width=32)
    assert torch.allclose(batch.pixels[2], alone.pixels[0], atol=1e-5)  # and image i still equals it alone
