"""A1111's inpainting options (issue 21): "Only masked" against diffusers' `padding_mask_crop`, and the
four kinds of masked content."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from test_parity import TOL, source_image

from sdlab.sampling.inpainting import fill_masked
from sdlab.sampling.loop import generate
from sdlab.sampling.schedulers import make_scheduler

PROMPT = "a red cube on a table"


def small_mask(size=(48, 32)) -> PIL.Image.Image:
    mask = PIL.Image.new("L", size, 0)
    mask.paste(255, (28, 6, 40, 18))
    return mask


@pytest.mark.parametrize("model", ["tiny", "tiny_inpaint"])
def test_only_masked_equals_diffusers_padding_mask_crop(model, request):
    """The mask's box plus 4 pixels, widened to 32x32, sampled at 32x32 and pasted into the 48x32 original,
    with the original's unmasked pixels on top: diffusers' pipeline with `padding_mask_crop=4`."""
    pipe = request.getfixturevalue(model)
    kwargs = dict(num_inference_steps=3, guidance_scale=5.0, height=32, width=32)
    image, mask = source_image(), small_mask()
    ours = generate(pipe, PROMPT, init_image=image, mask_image=mask, padding_mask_crop=4, scheduler="euler", seed=3,
                    **kwargs)  # fmt: skip
    ref = StableDiffusionInpaintPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=make_scheduler("euler", pipe.scheduler_config, inpainting=True), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    theirs = ref(PROMPT, image=image, mask_image=mask, padding_mask_crop=4, generator=torch.Generator().manual_seed(3),
                 output_type="pil", **kwargs).images[0]  # fmt: skip
    assert ours.images[0].size == (48, 32)  # the original's size
    a, b = (np.asarray(x, dtype=np.float32) / 255 for x in (ours.images[0], theirs))
    assert np.abs(a - b).mean() < TOL
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(ours.images[0])[outside], np.asarray(image)[outside])  # kept exactly
    whole = generate(pipe, PROMPT, init_image=image, mask_image=mask, scheduler="euler", seed=3, **kwargs)
    assert whole.images[0].size == (32, 32)  # the whole picture, resized


def test_fill_paints_the_hole_with_the_colours_around_it():
    """A1111's `masking.fill`: a red picture with a black hole comes back red in the hole, untouched elsewhere."""
    image = PIL.Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((0, 0, 0), (24, 24, 40, 40))
    mask = PIL.Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    hole = filled[24:40, 24:40]
    assert np.abs(hole - [200, 30, 30]).max() <= 8  # the black hole was 200 away; premultiplied rounding
    outside = np.asarray(mask) == 0
    assert np.array_equal(filled[outside], np.asarray(image).astype(int)[outside])


def test_masked_content_changes_where_the_masked_area_starts(tiny):
    """Below strength 1 the four kinds start the hole differently, so their images differ. At strength 1 the
    hole starts from noise whatever its latents hold; the three kinds that paint the hole first (A1111 fills
    the pixels for all but "original") then give one image, "original" another (the VAE sees across the
    mask's edge, so the kept region's latents differ)."""
    kwargs = dict(init_image=source_image((32, 32)), mask_image=small_mask((32, 32)), num_inference_steps=4,
                  guidance_scale=4.0, scheduler="euler", seed=5)  # fmt: skip
    kinds = ("fill", "original", "latent noise", "latent nothing")
    partial = {
        kind: generate(tiny, PROMPT, inpainting_fill=kind, strength=0.6, **kwargs).pixels for kind in kinds
    }
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            assert not torch.equal(partial[a], partial[b]), (a, b)
    full = {
        kind: generate(tiny, PROMPT, inpainting_fill=kind, strength=1.0, **kwargs).pixels for kind in kinds
    }
    assert torch.equal(full["fill"], full["latent noise"]) and torch.equal(
        full["fill"], full["latent nothing"]
    )
    assert not torch.equal(full["fill"], full["original"])


def test_masked_content_and_only_masked_are_recorded_and_replayed(tmp_path, tiny_dir, capsys):
    from sdlab.cli.main import main
    from sdlab.images import read_png_text

    source_image((32, 32)).save(tmp_path / "init.png")
    small_mask((32, 32)).save(tmp_path / "mask.png")
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    argv = ["generate", PROMPT, "--model", str(tiny_dir), "--init-image", str(tmp_path / "init.png"), "--mask",
            str(tmp_path / "mask.png"), "--strength", "0.7", "--inpainting-fill", "latent noise",
            "--padding-mask-crop", "8", "--steps", "3", "--seed", "2", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    text = read_png_text(out)["parameters"]
    assert "Masked content: latent noise" in text and "Masked area padding: 8" in text
    assert "Inpaint area: Only masked" in text
    assert main(["replay", str(out), "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(again)))


def test_only_masked_with_an_all_black_mask_is_one_sentence(tiny):
    from sdlab.errors import InputError

    with pytest.raises(InputError, match="the mask is all black: nothing to repaint"):
        generate(tiny, PROMPT, init_image=source_image((32, 32)), mask_image=PIL.Image.new("L", (32, 32)),
                 padding_mask_crop=0, num_inference_steps=2)  # fmt: skip
