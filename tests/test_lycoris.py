"""LyCORIS files (issue 21): LoHa and LoKr against peft's own layers, LoCon's CP core against running its three
convolutions in turn, DoRA against its definition, each taken off exactly, and the kinds sdlab does not
apply refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_pipeline
from peft import LoHaConfig, LoKrConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import load_file, save_file

from sdlab.errors import InputError
from sdlab.lora import load_lora, unload_lora

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]  # attention and the ResNets' 3x3 convs


def kohya_file(state: dict[str, torch.Tensor], path, alpha: float) -> None:
    """peft's layer tensors under kohya's names (`lora_unet_` + the module with underscores), with alphas."""
    tensors = {}
    for key, value in state.items():
        module, part = key.rsplit(".", 1)
        name = "lora_unet_" + module.replace(".", "_")
        tensors[f"{name}.{part}"] = value.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=text).sample


@pytest.mark.parametrize(
    "config",
    [LoHaConfig(r=4, alpha=4, target_modules=TARGETS, init_weights=False),
     LoKrConfig(r=2, alpha=2, target_modules=TARGETS, init_weights=False)],
    ids=["loha", "lokr"],
)  # fmt: skip
def test_loha_and_lokr_equal_peft_at_their_weight_and_come_off_exactly(tmp_path, config):
    pipe = tiny_pipeline(seed=2)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    torch.manual_seed(0)
    adapted = copy.deepcopy(pipe.unet)
    inject_adapter_in_model(config, adapted)
    kohya_file(get_peft_model_state_dict(adapted), tmp_path / "net.safetensors", config.alpha)
    for module in adapted.modules():  # peft's weight: its layers scaled, as A1111's multiplier scales
        if hasattr(module, "scaling"):
            module.scaling["default"] *= 0.6
    name = load_lora(pipe, tmp_path / "net.safetensors", 0.6)
    ours, theirs = unet_output(pipe.unet), unet_output(adapted)
    assert not torch.allclose(ours, unet_output(tiny_pipeline(seed=2).unet), atol=1e-3)  # it changed the UNet
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    unload_lora(pipe, name)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_locon_with_a_cp_core_equals_its_three_convolutions(tmp_path):
    """A1111#8360: `lora_mid` (LoCon's CP decomposition) was refused with a cut-off sentence. Merged, the
    layer computes conv(up, conv(mid, conv(down, x))) * alpha / rank on top of the original conv."""
    pipe = tiny_pipeline(seed=2)
    conv = pipe.unet.down_blocks[0].resnets[0].conv1  # 3x3, 32 -> 32
    original = copy.deepcopy(conv)
    g = torch.Generator().manual_seed(1)
    down, mid, up = (torch.randn(4, 32, 1, 1, generator=g), torch.randn(4, 4, 3, 3, generator=g) * 0.1,
                     torch.randn(32, 4, 1, 1, generator=g))  # fmt: skip
    layer = "lora_unet_down_blocks_0_resnets_0_conv1"
    save_file({f"{layer}.lora_down.weight": down, f"{layer}.lora_mid.weight": mid, f"{layer}.lora_up.weight": up,
               f"{layer}.alpha": torch.tensor(2.0)}, str(tmp_path / "locon.safetensors"))  # fmt: skip
    name = load_lora(pipe, tmp_path / "locon.safetensors", 0.8)
    x = torch.randn(1, 32, 8, 8, generator=g)
    f = torch.nn.functional
    branch = f.conv2d(f.conv2d(f.conv2d(x, down), mid, padding=1), up)
    with torch.no_grad():
        assert torch.allclose(conv(x), original(x) + 0.8 * (2.0 / 4) * branch, atol=1e-4)
    unload_lora(pipe, name)
    assert torch.equal(conv.weight, original.weight)


@pytest.mark.parametrize("per_row", [False, True], ids=["columns", "rows"])
def test_dora_rescales_each_column_or_row_to_its_stored_magnitude(tmp_path, per_row):
    """A1111's `apply_weight_decompose` at weight 1: W' = (W + s dW) * m / ||W + s dW|| per input column for a
    (1, in) dora_scale, so every column of W' has norm m and the direction of W + s dW; per output row for
    LyCORIS' (out, 1) layout (`wd_on_output`), on a layer that is not square."""
    pipe = tiny_pipeline(seed=2)
    attention = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    proj = attention.attn2.to_k if per_row else attention.attn1.to_q  # Linear 32 -> 64, or 64 -> 64
    w = proj.weight.detach().clone()
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(4, w.shape[1], generator=g), torch.randn(w.shape[0], 4, generator=g) * 0.1
    magnitude = torch.rand(*((w.shape[0], 1) if per_row else (1, w.shape[1])), generator=g) + 0.5
    layer = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_" + (
        "attn2_to_k" if per_row else "attn1_to_q"
    )
    save_file({f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up, f"{layer}.alpha": torch.tensor(4.0),
               f"{layer}.dora_scale": magnitude}, str(tmp_path / "dora.safetensors"))  # fmt: skip
    name = load_lora(pipe, tmp_path / "dora.safetensors", 1.0)
    merged, direction, axis = proj.weight.detach(), w + up @ down, 1 if per_row else 0
    assert torch.allclose(merged.norm(dim=axis), magnitude.flatten(), atol=1e-5)
    norms = (merged.norm(dim=axis, keepdim=True), direction.norm(dim=axis, keepdim=True))
    assert torch.allclose(merged / norms[0], direction / norms[1], atol=1e-5)
    unload_lora(pipe, name)
    assert torch.equal(proj.weight, w)


def test_kinds_sdlab_does_not_apply_and_files_for_another_model_are_one_sentence(tmp_path):
    pipe = tiny_pipeline(seed=2)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    layer = "lora_unet_down_blocks_0_resnets_0_conv1"
    save_file({f"{layer}.oft_blocks": torch.zeros(4, 8, 8)}, str(tmp_path / "oft.safetensors"))
    with pytest.raises(InputError, match=r"oft.safetensors is not a network sdlab can apply to this model: it is a "
                                         r"LyCORIS OFT network \(lora_unet_down_blocks_0_resnets_0_conv1.oft_blocks\)"):  # fmt: skip
        load_lora(pipe, tmp_path / "oft.safetensors")
    save_file({"lora_unet_input_blocks_99_1_proj_in.hada_w1_a": torch.zeros(4, 2),
               "lora_unet_input_blocks_99_1_proj_in.hada_w1_b": torch.zeros(2, 4)},
              str(tmp_path / "elsewhere.safetensors"))  # fmt: skip
    with pytest.raises(InputError, match="none of its 1 layers .* is in this sd1 model"):
        load_lora(pipe, tmp_path / "elsewhere.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_an_sdxl_loha_in_kohyas_original_block_names(tmp_path):
    """SDXL files name the UNet's layers by the original (SGM) blocks, `lora_unet_input_blocks_4_1_...`."""
    from conftest import tiny_sdxl_pipeline

    from sdlab.loading.export import unet_to_original

    pipe = tiny_sdxl_pipeline(seed=1)
    torch.manual_seed(0)
    adapted = copy.deepcopy(pipe.unet)
    inject_adapter_in_model(LoHaConfig(r=4, alpha=4, target_modules=TARGETS, init_weights=False), adapted)
    state = get_peft_model_state_dict(adapted)
    modules = sorted({key.rsplit(".", 1)[0] for key in state})
    original = unet_to_original({f"{m}.weight": m for m in modules}, pipe.unet.config)
    names = {module: key.removesuffix(".weight") for key, module in original.items()}
    renamed = {
        f"{names[key.rsplit('.', 1)[0]]}.{key.rsplit('.', 1)[1]}": value for key, value in state.items()
    }
    kohya_file(renamed, tmp_path / "xl.safetensors", 4.0)
    assert any(k.startswith("lora_unet_input_blocks_") for k in load_file(tmp_path / "xl.safetensors"))
    load_lora(pipe, tmp_path / "xl.safetensors")

    def output(unet):
        g = torch.Generator().manual_seed(0)
        x, text = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 80, generator=g)
        added = {
            "text_embeds": torch.randn(1, 32, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]]),
        }
        with torch.no_grad():
            return unet(x, torch.tensor([500]), encoder_hidden_states=text, added_cond_kwargs=added).sample

    assert torch.allclose(output(pipe.unet), output(adapted), atol=1e-5)
