"""A model's parts from files of their own (issue 20): a VAE from A1111's models/VAE or a diffusers
folder, and ComfyUI's UNet-only checkpoints with clip_l/clip_g files, give the same weights and pixels
as the whole model; a missing or wrong part is one sentence."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vae
from safetensors.torch import load_file, save_file

from sdlab.errors import InputError
from sdlab.loading import load_pipeline
from sdlab.loading.export import save_single_file
from sdlab.sampling.loop import generate

KWARGS = dict(num_inference_steps=3, guidance_scale=4.0, height=32, width=32, scheduler="euler", seed=1)


def split(whole: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in whole.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory, tiny_sdxl):
    """The tiny SDXL as one A1111 file, and as ComfyUI keeps it apart: a UNet-only checkpoint, a VAE in
    the original layout (models/vae), clip_l and clip_g in transformers' layout (models/clip), and bigG in
    OpenCLIP's layout."""
    folder = tmp_path_factory.mktemp("parts")
    whole = load_file(save_single_file(tiny_sdxl, folder / "whole.safetensors"))
    files = {
        "unet": {k: v for k, v in whole.items() if k.startswith("model.diffusion_model.")},
        "unet_bare": split(whole, "model.diffusion_model."),
        "vae": split(whole, "first_stage_model."),
        "clip_l": {f"text_model.{k}": v.clone() for k, v in tiny_sdxl.text_encoder.state_dict().items()},
        "clip_g": {k: v.clone() for k, v in tiny_sdxl.text_encoder_2.state_dict().items()},
        "clip_g_openclip": split(whole, "conditioner.embedders.1.model."),
    }
    for name, tensors in files.items():
        save_file(tensors, str(folder / f"{name}.safetensors"))
    return folder


def same_weights(a, b) -> None:
    for ours, theirs in zip(a.modules(), b.modules(), strict=True):
        for (name, x), y in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(x, y), name


@pytest.mark.parametrize("clip_g", ["clip_g", "clip_g_openclip"])
def test_a_unet_only_checkpoint_with_its_parts_is_the_whole_model(
    sdxl_files, tiny_sdxl, tiny_sdxl_dir, clip_g
):
    parts = sdxl_files
    loaded = load_pipeline(
        parts / "unet.safetensors", config=tiny_sdxl_dir, device="cpu", dtype="float32", vae=parts / "vae.safetensors",
        text_encoder=parts / "clip_l.safetensors", text_encoder_2=parts / f"{clip_g}.safetensors",
    )  # fmt: skip
    same_weights(loaded, tiny_sdxl)
    whole = load_pipeline(parts / "whole.safetensors", config=tiny_sdxl_dir, device="cpu", dtype="float32")
    assert torch.equal(generate(loaded, "a cat", **KWARGS).pixels, generate(whole, "a cat", **KWARGS).pixels)


def test_a_checkpoint_without_a_part_names_the_flag_that_gives_it(sdxl_files, tiny_sdxl_dir, capsys):
    from sdlab.cli.main import main

    with pytest.raises(InputError, match=r"has no VAE weights .* give them with --vae FILE"):
        load_pipeline(sdxl_files / "unet.safetensors", config=tiny_sdxl_dir, device="cpu")
    with pytest.raises(InputError, match=r"has no second text encoder weights .* --text-encoder-2 FILE"):
        load_pipeline(
            sdxl_files / "unet.safetensors", config=tiny_sdxl_dir, device="cpu", vae=sdxl_files / "vae.safetensors",
            text_encoder=sdxl_files / "clip_l.safetensors",
        )  # fmt: skip
    # the wrong file for a part, and a part that does not exist: one sentence from the CLI
    argv = ["generate", "a cat", "--model", str(sdxl_files / "whole.safetensors"), "--config", str(tiny_sdxl_dir),
            "-o", str(sdxl_files / "out.png")]  # fmt: skip
    assert main([*argv, "--vae", str(sdxl_files / "clip_l.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--vae " in err and "lacks" in err and "VAE weights" in err and "Traceback" not in err
    assert main([*argv, "--vae", str(sdxl_files / "nowhere.safetensors")]) == 2
    assert "--vae " in capsys.readouterr().err
    assert main([*argv, "--text-encoder-2", str(sdxl_files / "clip_l.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "second text encoder" in err and "Traceback" not in err


@pytest.mark.parametrize("layout", ["original", "diffusers file", "diffusers folder"])
def test_a_separate_vae_replaces_the_models_own(tiny, tiny_dir, tmp_path, layout):
    """`--vae` on an SD 1.x folder: the original layout (A1111's models/VAE), diffusers' keys in a file, or
    a diffusers vae/ folder; the images are those of the model with that VAE put in by hand."""
    from sdlab.loading.export import vae_to_original

    other = tiny_vae(seed=7)
    if layout == "diffusers folder":
        other.save_pretrained(tmp_path / "vae")
        source = tmp_path / "vae"
    else:
        state = other.state_dict()
        tensors = vae_to_original(state, other.config) if layout == "original" else state
        source = tmp_path / "other.vae.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(source))
    loaded = load_pipeline(tiny_dir, device="cpu", dtype="float32", vae=source)
    for (name, a), b in zip(loaded.vae.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    by_hand = load_pipeline(tiny_dir, device="cpu", dtype="float32")
    by_hand.vae = other.eval()
    ours = generate(loaded, "a cat", **KWARGS).pixels
    assert torch.equal(ours, generate(by_hand, "a cat", **KWARGS).pixels)
    assert not torch.equal(ours, generate(tiny, "a cat", **KWARGS).pixels)


def test_a_vae_folder_that_does_not_fit_is_one_sentence_and_serve_keeps_each_models_own(tiny_dir, tmp_path):
    """A part from a folder brings its own config, so it is checked against the model's: a VAE with another
    number of levels (another factor) is refused by name; `sdlab serve --vae` applies it to the models it
    fits, and the others keep their own VAE."""
    from diffusers import AutoencoderKL

    from sdlab.service import ModelRegistry

    AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8).save_pretrained(tmp_path / "vae")  # fmt: skip
    with pytest.raises(
        InputError, match=r"--vae .*vae does not fit this model's VAE: its block_out_channels is 4"
    ):
        load_pipeline(tiny_dir, device="cpu", vae=tmp_path / "vae")
    registry = ModelRegistry(device="cpu", dtype="float32", parts={"vae": str(tmp_path / "vae")},
                             parts_where_they_fit=True)  # fmt: skip
    digits = registry.pipeline(registry.find_model("digits"))
    assert len(digits.vae.config.block_out_channels) == 3  # its own
