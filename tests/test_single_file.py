"""Single-file checkpoints: export and load are exact inverses, and the shipped configs fit real SD files.

Tiny seeded models check the round trip tensor for tensor; the full-size SD 1.x/2.x architectures are built
on the meta device (no memory) to check the key layout against diffusers' own converters.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_text_encoder
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdlab.errors import InputError
from sdlab.loading import export, single_file
from sdlab.loading.export import original_state_dict, save_single_file
from sdlab.loading.hashing import model_hash
from sdlab.loading.single_file import MODEL_TYPES, config_dir, detect_model_type, load_single_file, predicts_v
from sdlab.loading.tokenizer import clip_tokenizer
from sdlab.pipeline import Pipeline

# ---------------------------------------------------------------- tiny models


def tiny_unet(layers_per_block: int = 2) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )


def tiny_components(text_act: str = "quick_gelu", layers_per_block: int = 2, seed: int = 0):
    """diffusers' SD pipeline-test sizes; every parameter (norms too) random, so a swapped key shows."""
    torch.manual_seed(seed)
    unet = tiny_unet(layers_per_block)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    )
    text_encoder = tiny_text_encoder(text_act)  # "gelu" makes it an OpenCLIP (SD 2.x) text tower
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for p in module.parameters():
                p.normal_()
            module.eval()
    return unet, vae, text_encoder


def save_diffusers_folder(folder: Path, unet, vae, text_encoder) -> Path:
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        skip_prk_steps=True,
        set_alpha_to_one=False,
    ).save_pretrained(folder / "scheduler")
    return folder


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    want, got = expected.state_dict(), actual.state_dict()
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert different == []


@pytest.fixture(scope="module", params=["clip", "open_clip"])
def tiny(request, tmp_path_factory):
    """(kind, components, config folder, exported file), with an SD 1.x and an SD 2.x style text encoder."""
    components = tiny_components("gelu" if request.param == "open_clip" else "quick_gelu")
    folder = save_diffusers_folder(tmp_path_factory.mktemp(request.param), *components)
    pipe = Pipeline(*components, tokenizer=clip_tokenizer(), scheduler_config={})
    path = save_single_file(pipe, folder / "tiny-model.safetensors")
    return request.param, components, folder, path


# ---------------------------------------------------------------- round trip


def test_round_trip_is_exact(tiny) -> None:
    kind, (unet, vae, text_encoder), folder, path = tiny
    pipe = load_single_file(path, config=folder)
    assert_same_weights(unet, pipe.unet)
    assert_same_weights(vae, pipe.vae)
    assert_same_weights(text_encoder, pipe.text_encoder)
    assert pipe.tokenizer.pad_token == ("!" if kind == "open_clip" else "<|endoftext|>")
    assert pipe.scheduler_config == json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (pipe.source, pipe.name) == (str(path), "tiny-model")
    # and exporting what was loaded writes the same tensors again
    again = save_single_file(pipe, path.with_name("again.safetensors"))
    first, second = load_file(path), load_file(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_text_encoder_export_accepts_text_model_prefix(act: str) -> None:
    # transformers >= 5.6 flattened CLIPTextModel; older state dicts carry a "text_model." level.
    text_encoder = tiny_components(act)[2]
    flat = text_encoder.state_dict()
    nested = {f"text_model.{k}": v for k, v in flat.items()}
    convert = export.open_clip_to_original if act == "gelu" else export.clip_to_original
    assert convert(flat).keys() == convert(nested).keys()
    assert all(torch.equal(convert(flat)[k], v) for k, v in convert(nested).items())


def test_export_writes_the_original_layout(tiny) -> None:
    kind, _, _, path = tiny
    state_dict = load_file(path)
    text_prefix = "cond_stage_model.model." if kind == "open_clip" else "cond_stage_model.transformer."
    prefixes = ("model.diffusion_model.", "first_stage_model.", text_prefix)
    assert all(k.startswith(prefixes) for k in state_dict)
    assert state_dict["model.diffusion_model.input_blocks.0.0.weight"].shape == (32, 4, 3, 3)
    assert state_dict["model.diffusion_model.out.2.weight"].shape == (4, 32, 3, 3)
    # VAE mid-block attention is stored as 1x1 convolutions
    assert state_dict["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert state_dict["first_stage_model.encoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
    if kind == "open_clip":
        assert state_dict[text_prefix + "transformer.resblocks.4.attn.in_proj_weight"].shape == (96, 32)
        assert state_dict[text_prefix + "positional_embedding"].shape == (77, 32)
    else:
        assert state_dict[text_prefix + "text_model.final_layer_norm.weight"].shape == (32,)


@pytest.mark.parametrize("layers_per_block", [1, 3])
def test_round_trip_other_block_depths(tmp_path: Path, layers_per_block: int) -> None:
    components = tiny_components(layers_per_block=layers_per_block, seed=1)
    folder = save_diffusers_folder(tmp_path, *components)
    path = save_single_file(Pipeline(*components, clip_tokenizer(), {}), tmp_path / "m.safetensors")
    pipe = load_single_file(path, config=folder)
    assert_same_weights(components[0], pipe.unet)


def test_export_casts_dtype(tiny, tmp_path: Path) -> None:
    _, (unet, vae, text_encoder), _, _ = tiny
    pipe = Pipeline(unet, vae, text_encoder, clip_tokenizer(), {})
    path = save_single_file(pipe, tmp_path / "half.safetensors", dtype=torch.float16)
    state_dict = load_file(path)
    reference = original_state_dict(unet, vae, text_encoder)
    assert state_dict.keys() == reference.keys()
    assert all(torch.equal(state_dict[k], reference[k].half()) for k in reference)


def test_export_is_atomic(tiny, tmp_path: Path, monkeypatch) -> None:
    _, components, _, _ = tiny
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the previous file")

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_single_file(Pipeline(*components, clip_tokenizer(), {}), target)
    assert target.read_bytes() == b"the previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_export_refuses_pickle_suffix(tiny, tmp_path: Path) -> None:
    _, components, _, _ = tiny
    with pytest.raises(InputError, match="model.ckpt"):
        save_single_file(Pipeline(*components, clip_tokenizer(), {}), tmp_path / "model.ckpt")


# ---------------------------------------------------------------- loading edge cases


def test_ema_weights_are_ignored(tiny, tmp_path: Path) -> None:
    # A1111 training checkpoints carry a flattened EMA copy (model_ema.<key without dots>); like diffusers and
    # A1111, the model.diffusion_model.* weights are the ones loaded.
    _, (unet, _, _), folder, path = tiny
    state_dict = load_file(path)
    ema = {
        "model_ema." + k.removeprefix("model.").replace(".", ""): torch.zeros_like(v)
        for k, v in state_dict.items()
        if k.startswith("model.diffusion_model.")
    }
    assert len(ema) > 100  # diffusers' threshold for calling a checkpoint EMA
    save_file({**state_dict, **ema}, tmp_path / "ema.safetensors")
    pipe = load_single_file(tmp_path / "ema.safetensors", config=folder)
    assert_same_weights(unet, pipe.unet)


def test_missing_weight_is_an_input_error(tiny, tmp_path: Path) -> None:
    _, _, folder, path = tiny
    state_dict = load_file(path)
    del state_dict["model.diffusion_model.middle_block.1.proj_in.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(state_dict, broken)
    with pytest.raises(
        InputError, match=r"lacks 1 UNet weights.*mid_block\.attentions\.0\.proj_in\.weight"
    ) as info:
        load_single_file(broken, config=folder)
    assert str(broken) in str(info.value)


@pytest.mark.parametrize(
    ("prefix", "what"), [("first_stage_model.", "VAE"), ("cond_stage_model.", "text encoder")]
)
def test_missing_component_is_an_input_error(tiny, tmp_path: Path, prefix: str, what: str) -> None:
    _, _, folder, path = tiny
    state_dict = {k: v for k, v in load_file(path).items() if not k.startswith(prefix)}
    broken = tmp_path / "no-component.safetensors"
    save_file(state_dict, broken)
    with pytest.raises(InputError, match=f"has no {what}") as info:
        load_single_file(broken, config=folder)
    assert str(broken) in str(info.value)


def test_wrong_config_is_an_input_error(tiny) -> None:
    _, _, _, path = tiny
    with pytest.raises(InputError, match="expected shape") as info:
        load_single_file(path, config="sd15")
    assert str(path) in str(info.value)


def test_bad_config_argument(tiny, tmp_path: Path) -> None:
    _, _, folder, path = tiny
    with pytest.raises(InputError, match="sd3"):
        load_single_file(path, config="sd3")
    (tmp_path / "unet").mkdir()
    with pytest.raises(InputError, match="vae/config.json"):
        load_single_file(path, config=tmp_path)


def test_user_tokenizer_folder_wins(tiny, tmp_path: Path) -> None:
    kind, _, folder, path = tiny
    config = tmp_path / "config"
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        (config / sub).mkdir(parents=True)
        for file in (folder / sub).glob("*.json"):
            (config / sub / file.name).write_text(file.read_text())
    clip_tokenizer(pad_token="<|startoftext|>", model_max_length=33).save_pretrained(config / "tokenizer")
    pipe = load_single_file(path, config=config)
    assert (pipe.tokenizer.pad_token, pipe.tokenizer.model_max_length) == ("<|startoftext|>", 33)


# ---------------------------------------------------------------- full-size configs, on the meta device


@functools.cache
def meta_components(name: str):
    folder = config_dir(name)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = text_encoder_2 = None
        if (folder / "text_encoder").is_dir():
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        if (folder / "text_encoder_2").is_dir():
            text_encoder_2 = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            )
    return unet, vae, text_encoder, text_encoder_2


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# The published sizes (UNet, VAE, text encoder, SDXL's second text encoder); the text encoders are worked
# out by hand in the test below.
SIZES = {
    "sd15": (859_520_964, 83_653_863, 123_060_480, 0),
    "sd15-inpaint": (859_535_364, 83_653_863, 123_060_480, 0),  # conv_in takes 9 channels: + 5 * 320 * 3 * 3
    "sd2": (865_910_724, 83_653_863, 340_387_840, 0),
    "sd2-v": (865_910_724, 83_653_863, 340_387_840, 0),
    "sd2-inpaint": (865_925_124, 83_653_863, 340_387_840, 0),
    "sdxl": (2_567_463_684, 83_653_863, 123_060_480, 694_659_840),
    "sdxl-inpaint": (2_567_478_084, 83_653_863, 123_060_480, 694_659_840),  # + 5 * 320 * 3 * 3
    # the refiner's UNet as its config (SGM's sd_xl_refiner.yaml: 384 channels x 1, 2, 4, 4, depth 4) builds it
    "sdxl-refiner": (2_259_526_660, 83_653_863, 0, 694_659_840),
}


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_shipped_config_sizes(name: str) -> None:
    assert tuple(count(m) for m in meta_components(name)) == SIZES[name]


def test_text_encoder_sizes_from_first_principles() -> None:
    def transformer(width: int, mlp: int, layers: int) -> int:
        attention = 4 * (width * width + width)  # q, k, v and out projections
        feed_forward = (width * mlp + mlp) + (mlp * width + width)
        layer_norms = 2 * 2 * width
        embeddings = 49408 * width + 77 * width  # tokens and positions
        return layers * (attention + feed_forward + layer_norms) + embeddings + 2 * width  # + final norm

    assert transformer(768, 3072, 12) == SIZES["sd15"][2]  # OpenAI CLIP ViT-L/14 text tower
    assert transformer(1024, 4096, 23) == SIZES["sd2"][2]  # OpenCLIP ViT-H/14, last of 24 layers dropped
    projection = 1280 * 1280  # no bias
    assert transformer(1280, 5120, 32) + projection == SIZES["sdxl"][3]  # OpenCLIP ViT-bigG/14, all 32 layers


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_exported_layout_matches_diffusers_converters(name: str) -> None:
    unet, vae, text_encoder, text_encoder_2 = meta_components(name)
    original = original_state_dict(unet, vae, text_encoder, text_encoder_2)
    back = {
        unet: convert_ldm_unet_checkpoint(original, unet.config),
        vae: convert_ldm_vae_checkpoint(original, vae.config),
    }
    if text_encoder_2 is not None:  # SDXL: bigG is embedder 1, or 0 in the refiner
        prefix = f"conditioner.embedders.{0 if text_encoder is None else 1}.model."
        back[text_encoder_2] = convert_open_clip_checkpoint(text_encoder_2, original, prefix=prefix)
    if text_encoder is not None and text_encoder.config.hidden_act == "gelu":
        text = convert_open_clip_checkpoint(text_encoder, original)
        back[text_encoder] = {k.removeprefix("text_model."): v for k, v in text.items()}
    elif text_encoder is not None:
        text = convert_ldm_clip_checkpoint(original)
        back[text_encoder] = {k.removeprefix("text_model."): v for k, v in text.items()}
    for module, converted in back.items():
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sd15", "sd15"),
        ("sd15-inpaint", "sd15-inpaint"),
        ("sd2", "sd2-v"),
        ("sd2-v", "sd2-v"),
        ("sd2-inpaint", "sd2-inpaint"),
        ("sdxl", "sdxl"),
        ("sdxl-inpaint", "sdxl-inpaint"),
        ("sdxl-refiner", "sdxl-refiner"),
    ],
)
def test_detect_model_type(name: str, expected: str) -> None:
    # SD 2.x base and 768-v have the same shapes; keys alone give "sd2-v", loading then runs `predicts_v`.
    assert detect_model_type(original_state_dict(*meta_components(name))) == expected


def test_detect_rejects_other_models() -> None:
    with pytest.raises(InputError, match="no Stable Diffusion UNet"):
        detect_model_type({"lora_unet_down.alpha": torch.ones(1)})
    playground = original_state_dict(*meta_components("sdxl"))  # SDXL's keys, with an EDM latent space
    playground["edm_mean"] = torch.ones(1, 4, 1, 1)
    with pytest.raises(InputError, match="looks like Playground v2.5"):
        detect_model_type(playground)


@pytest.mark.parametrize(("is_v", "expected"), [(True, "sd2-v"), (False, "sd2")])
def test_sd2_config_follows_the_v_test(monkeypatch, is_v: bool, expected: str) -> None:
    state_dict = original_state_dict(*meta_components("sd2"))
    loaded = []

    def fake_load(cls, subfolder, state_dict, cfg_dir, path, dtype):
        loaded.append(f"{subfolder} from {cfg_dir.name}")
        return loaded[-1]

    monkeypatch.setattr(single_file, "read_state_dict", lambda path, allow_pickle, dtype=None: state_dict)
    monkeypatch.setattr(single_file, "_load_component", fake_load)
    monkeypatch.setattr(single_file, "predicts_v", lambda unet: is_v)
    pipe = load_single_file("sd2-model.safetensors")
    # the UNet is first built as "sd2-v" to run the test, and rebuilt as "sd2" when it predicts epsilon
    first = ["unet from sd2-v"] if is_v else ["unet from sd2-v", "unet from sd2"]
    assert loaded == [*first, f"vae from {expected}", f"text_encoder from {expected}"]
    assert (pipe.unet, pipe.vae) == (f"unet from {expected}", f"vae from {expected}")
    assert pipe.scheduler_config["prediction_type"] == ("v_prediction" if is_v else "epsilon")
    assert pipe.tokenizer.pad_token == "!"


@pytest.mark.parametrize(("bias", "expected"), [(-2.0, True), (0.5, False)])
def test_predicts_v(bias: float, expected: bool) -> None:
    # A constant output c gives mean(out - x) = c - 0.5; A1111 calls it v below -1.
    torch.manual_seed(0)
    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(bias)
    assert predicts_v(unet) is expected


# ---------------------------------------------------------------- model hash


def test_model_hash_of_a_file_is_a1111_autov2(tiny) -> None:
    _, _, _, path = tiny
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_model_hash_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "vae").mkdir()
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"vae")
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet")
    (tmp_path / "unet" / "config.json").write_text("{}")  # configs are not hashed
    assert model_hash(tmp_path) == hashlib.sha256(b"unet" + b"vae").hexdigest()[:10]
    with pytest.raises(InputError, match="missing"):
        model_hash(tmp_path / "missing")


def test_model_hashes_are_cached_by_path_size_and_time(tmp_path: Path, monkeypatch) -> None:
    """As A1111: a 4 GB checkpoint is hashed once, not in every process; a changed file is hashed again."""
    import os

    import sdlab.loading.hashing as hashing

    monkeypatch.setenv("SDLAB_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    reads = []
    chunks = hashing._chunks
    monkeypatch.setattr(hashing, "_chunks", lambda f: reads.append(f) or chunks(f))
    first = model_hash(model)
    assert model_hash(model) == first and len(reads) == 1  # the second answer came from the cache
    assert first in (tmp_path / "cache" / "hashes.json").read_text()
    model.write_bytes(b"other weights")
    os.utime(model, ns=(1, 1))  # a different size and time: hashed again
    assert model_hash(model) == hashlib.sha256(b"other weights").hexdigest()[:10] and len(reads) == 2
    (tmp_path / "cache" / "hashes.json").write_text("not json")  # a damaged cache is ignored
    assert model_hash(model) == hashlib.sha256(b"other weights").hexdigest()[:10]
