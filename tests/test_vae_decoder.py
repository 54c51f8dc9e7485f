"""A tiny decoder (diffusers' AutoencoderTiny, TAESD) for final images and live previews."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline
from PIL import Image
from test_parity import TOL

from sdlab.errors import InputError
from sdlab.loading.decoder import load_vae_decoder
from sdlab.sampling.loop import generate
from sdlab.sampling.schedulers import make_scheduler

PROMPT = "a red cube on a table"


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory):
    """A TAESD-shaped decoder for the tiny model's latents (4 channels, factor 2), random weights."""
    torch.manual_seed(0)
    decoder = AutoencoderTiny(
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1), latent_channels=4,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("taesd")
    decoder.save_pretrained(folder)
    return folder


def test_final_images_decoded_by_taesd_match_diffusers_with_taesd_as_its_vae(tiny, taesd_dir):
    taesd = load_vae_decoder(taesd_dir)
    kwargs = dict(num_inference_steps=3, guidance_scale=5.0, height=32, width=32)
    ours = generate(tiny, PROMPT, **kwargs, scheduler="euler", seed=4, vae_decoder=taesd)
    pipe = StableDiffusionPipeline(
        vae=taesd, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        scheduler=make_scheduler("euler", tiny.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, **kwargs, generator=[torch.Generator().manual_seed(4)], output_type="pt").images
    full = generate(tiny, PROMPT, **kwargs, scheduler="euler", seed=4)
    assert (ours.pixels - theirs).abs().mean() < TOL
    assert (ours.pixels - full.pixels).abs().mean() > 10 * TOL  # another decoder, other pixels
    assert torch.equal(ours.latents, full.latents)  # the same sampling


def test_taesdxl_decodes_sdxl_as_diffusers_sdxl_pipeline_with_it_as_its_vae(tiny_sdxl, taesd_dir):
    """TAESDXL is TAESD's architecture trained on SDXL's latents: `--vae-decoder DIR` decodes an SDXL
    generation as `StableDiffusionXLPipeline(vae=AutoencoderTiny)` does (scaled latents, no upcast)."""
    from diffusers import StableDiffusionXLPipeline

    taesdxl = load_vae_decoder(taesd_dir)
    kwargs = dict(num_inference_steps=3, guidance_scale=5.0, height=32, width=32)
    ours = generate(tiny_sdxl, PROMPT, **kwargs, scheduler="euler", seed=4, vae_decoder=taesdxl)
    pipe = StableDiffusionXLPipeline(
        vae=taesdxl, text_encoder=tiny_sdxl.text_encoder, text_encoder_2=tiny_sdxl.text_encoder_2,
        tokenizer=tiny_sdxl.tokenizer, tokenizer_2=tiny_sdxl.tokenizer_2, unet=tiny_sdxl.unet,
        scheduler=make_scheduler("euler", tiny_sdxl.scheduler_config), add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, **kwargs, generator=[torch.Generator().manual_seed(4)], output_type="pt").images
    assert (ours.pixels - theirs).abs().mean() < TOL
    full = generate(tiny_sdxl, PROMPT, **kwargs, scheduler="euler", seed=4)
    assert torch.equal(ours.latents, full.latents) and (ours.pixels - full.pixels).abs().mean() > 10 * TOL


def test_the_cli_records_the_decoder_and_replay_uses_it(tiny_dir, taesd_dir, tmp_path, capsys):
    from sdlab.cli.main import main

    common = ["--model", str(tiny_dir), "--steps", "2", "--seed", "1"]
    assert (
        main(["generate", PROMPT, *common, "--vae-decoder", str(taesd_dir), "-o", str(tmp_path / "t.png")])
        == 0
    )
    assert main(["generate", PROMPT, *common, "-o", str(tmp_path / "full.png")]) == 0
    with Image.open(tmp_path / "t.png") as image:
        assert f"VAE Decoder: {taesd_dir.name}" in image.text["parameters"]
        assert json.loads(image.text["sdlab"])["vae_decoder"] == str(taesd_dir.resolve())
    assert main(["replay", str(tmp_path / "t.png"), "-o", str(tmp_path / "again.png")]) == 0
    with (
        Image.open(tmp_path / "t.png") as a,
        Image.open(tmp_path / "again.png") as b,
        Image.open(tmp_path / "full.png") as c,
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(
            np.asarray(a), np.asarray(c)
        )
    capsys.readouterr()
    assert (
        main(["generate", PROMPT, *common, "--vae-decoder", str(tmp_path), "-o", str(tmp_path / "x.png")])
        == 2
    )
    assert "not a diffusers folder (no config.json)" in capsys.readouterr().err


def test_a_decoder_for_another_latent_space_is_refused(tiny_dir, tmp_path):
    from sdlab.service import GenerationRequest, ModelRegistry, run_request

    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8), num_encoder_blocks=(1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
    ).save_pretrained(tmp_path / "x8")  # fmt: skip
    registry = ModelRegistry(allow_paths=True)
    request = GenerationRequest(
        PROMPT, model=str(tiny_dir), num_inference_steps=1, vae_decoder=str(tmp_path / "x8")
    )
    with pytest.raises(
        InputError, match="decodes 4-channel latents 4x up; this model's VAE has 4 channels and factor 2"
    ):
        run_request(registry, request)
    server = ModelRegistry()
    with pytest.raises(InputError, match="does not accept from requests"):
        run_request(server, GenerationRequest(PROMPT, num_inference_steps=1, vae_decoder="x"))


def test_live_previews_are_decoded_by_the_tiny_decoder_where_it_fits(tiny_dir, taesd_dir):
    from sdlab.service import ModelRegistry
    from sdlab.service.preview import DecoderPreview, LatentPreview
    from sdlab.service.worker import Worker

    registry = ModelRegistry(allow_paths=True)
    worker = Worker(registry, preview_decoder=str(taesd_dir))
    tiny = registry.pipeline(registry.find_model(str(tiny_dir)))
    preview = worker._preview("tiny", tiny)
    assert isinstance(preview, DecoderPreview)
    latents = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = load_vae_decoder(taesd_dir).decode(latents[None]).sample[0]
    image = np.asarray(preview.image(latents)).astype(np.float32) / 127.5 - 1
    assert (
        image.shape == (32, 32, 3)
        and np.abs(image - expected.permute(1, 2, 0).detach().numpy().clip(-1, 1)).max() < 0.01
    )
    digits = registry.pipeline(registry.find_model("digits"))  # factor 4: the decoder does not fit
    assert isinstance(worker._preview("digits", digits), LatentPreview)
