"""SDXL against diffusers' own SDXL pipelines on a tiny random SDXL (the sizes of diffusers' tests).

Same components, prompts, negative prompts, micro-conditioning, guidance, scheduler and seeds must give
the same pixels to within 1e-4 mean absolute difference on [0, 1], as for SD 1.x (test_parity.py).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_sdxl_pipeline
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from test_parity import NEGATIVES, PROMPTS, TOL, half_mask, source_image

from sdlab.errors import InputError
from sdlab.loading import load_pipeline
from sdlab.prompts import tokenize_prompt
from sdlab.sampling.conditioning import encode_conditioning
from sdlab.sampling.loop import generate
from sdlab.sampling.params import SamplingParams
from sdlab.sampling.schedulers import make_scheduler

SCHEDULERS = ["euler", "ddim", "dpmpp_2m", "euler_a"]


def reference(cls, pipe, scheduler: str, seed: int, **kwargs) -> torch.Tensor:
    """diffusers' SDXL pipeline `cls` on `pipe`'s components; images (B, 3, H, W) in [0, 1]."""
    components = dict(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, unet=pipe.unet,
        scheduler=make_scheduler(scheduler, pipe.scheduler_config),
    )  # fmt: skip
    if cls is StableDiffusionXLImg2ImgPipeline:
        components["requires_aesthetics_score"] = pipe.requires_aesthetics_score
    ref = cls(
        **components, force_zeros_for_empty_prompt=pipe.force_zeros_for_empty_prompt, add_watermarker=False
    )
    ref.set_progress_bar_config(disable=True)
    prompts = kwargs.get("prompt")
    rows = (
        len(kwargs["prompt_embeds"]) if prompts is None else 1 if isinstance(prompts, str) else len(prompts)
    )
    n = rows * kwargs.get("num_images_per_prompt", 1)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    return ref(**kwargs, generator=generators, output_type="pt").images


def test_family_and_default_size(tiny_sdxl):
    assert tiny_sdxl.family == "sdxl"
    assert tiny_sdxl_pipeline(refiner=True).family == "sdxl-refiner"
    assert tiny_sdxl.default_size == 32  # sample size 16 x the VAE's factor 2


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_txt2img_matches_diffusers(tiny_sdxl, scheduler):
    """Two prompts with their negatives, guided, with micro-conditioning."""
    kwargs = dict(
        prompt=PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=4, guidance_scale=6.0,
        original_size=(96, 64), crops_coords_top_left=(4, 2), target_size=(40, 48),
    )  # fmt: skip
    ours = generate(tiny_sdxl, **kwargs, height=32, width=48, scheduler=scheduler, seed=11)
    theirs = reference(StableDiffusionXLPipeline, tiny_sdxl, scheduler, 11, **kwargs, height=32, width=48)
    assert ours.pixels.shape == theirs.shape == (2, 3, 32, 48)
    assert (ours.pixels - theirs).abs().mean() < TOL
    assert ours.params.original_size == (96, 64)


NEGATIVE_SIZES = dict(
    original_size=(96, 64), crops_coords_top_left=(4, 2), target_size=(40, 48),
    negative_original_size=(16, 24), negative_crops_coords_top_left=(4, 2), negative_target_size=(32, 32),
)  # fmt: skip


def test_negative_micro_conditioning_matches_diffusers_image_by_image(tiny_sdxl):
    """Negative sizes condition the negative branch. Each image of a batch equals diffusers' image made
    alone. (diffusers 0.42 tiles [negative ids, ids] over a batch of B > 1 where its embeddings are
    [negatives..., prompts...], so in its batches most rows get the other branch's sizes.)"""
    kwargs = dict(negative_prompt=NEGATIVES, num_inference_steps=4, guidance_scale=6.0, height=32, width=48)
    ours = generate(tiny_sdxl, PROMPTS, **kwargs, **NEGATIVE_SIZES, scheduler="euler", seed=11)
    for i in range(2):
        alone = {**kwargs, "negative_prompt": NEGATIVES[i : i + 1], **NEGATIVE_SIZES}
        theirs = reference(
            StableDiffusionXLPipeline, tiny_sdxl, "euler", 11 + i, prompt=PROMPTS[i : i + 1], **alone
        )
        assert (ours.pixels[i : i + 1] - theirs).abs().mean() < TOL
    same = generate(tiny_sdxl, PROMPTS, **kwargs, **{k: v for k, v in NEGATIVE_SIZES.items() if "negative" not in k},
                    scheduler="euler", seed=11)  # fmt: skip
    assert (ours.pixels - same.pixels).abs().mean() > 10 * TOL


def test_micro_conditioning_changes_the_image(tiny_sdxl):
    """Guard for the test above: the size ids must reach the UNet, or parity proves nothing about them."""
    plain = generate(tiny_sdxl, PROMPTS[0], num_inference_steps=3, seed=1, scheduler="euler")
    small = generate(
        tiny_sdxl, PROMPTS[0], num_inference_steps=3, seed=1, scheduler="euler", original_size=(8, 8)
    )
    assert plain.params.original_size == plain.params.target_size == (32, 32)  # the output size, recorded
    assert (plain.pixels - small.pixels).abs().mean() > 10 * TOL


def test_empty_negative_prompt_is_zeros_as_diffusers_and_a1111(tiny_sdxl):
    """An empty negative prompt conditions the negative branch on zeros, embeddings and pooled."""
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=3, guidance_scale=5.0, height=32, width=32)
    ours = generate(tiny_sdxl, **kwargs, negative_prompt="", scheduler="euler", seed=3)
    theirs = reference(StableDiffusionXLPipeline, tiny_sdxl, "euler", 3, **kwargs)  # negative_prompt=None
    assert (ours.pixels - theirs).abs().mean() < TOL
    p = SamplingParams(height=32, width=32, original_size=(32, 32), target_size=(32, 32))
    _, uncond = encode_conditioning(tiny_sdxl, p, ["a cat"], [""])
    assert not uncond.embeds.any() and not uncond.pooled.any()


def test_clip_skip_matches_diffusers(tiny_sdxl):
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=3, guidance_scale=1.0, height=32, width=32)
    ours = generate(tiny_sdxl, **kwargs, clip_skip=2, scheduler="euler", seed=8)
    theirs = reference(StableDiffusionXLPipeline, tiny_sdxl, "euler", 8, **kwargs, clip_skip=2)
    default = generate(tiny_sdxl, **kwargs, scheduler="euler", seed=8)
    assert (ours.pixels - theirs).abs().mean() < TOL
    assert (ours.pixels - default.pixels).abs().mean() > 10 * TOL
    with pytest.raises(InputError, match="clip_skip 5 skips past this text encoder's 5 layers"):
        generate(tiny_sdxl, **kwargs, clip_skip=5)


def test_long_prompt_is_chunked_for_both_encoders_and_pooled_from_the_first(tiny_sdxl):
    """A1111's 75-token chunks, applied to each encoder; the pooled embedding is the first chunk's."""
    prompt = ", ".join(f"word{i} thing{i}" for i in range(40))
    n = tokenize_prompt(tiny_sdxl.tokenizer, prompt).ids.shape[0]
    assert n > 1
    embeds = []
    for tokenizer, encoder in tiny_sdxl.text_encoders:
        ids = tokenize_prompt(tokenizer, prompt).ids
        with torch.no_grad():
            out = encoder(ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2].reshape(1, n * 77, -1))
    pooled = out.text_embeds[:1]
    kwargs = dict(num_inference_steps=3, guidance_scale=1.0, height=32, width=32)
    ours = generate(tiny_sdxl, prompt, **kwargs, scheduler="euler", seed=2)
    theirs = reference(StableDiffusionXLPipeline, tiny_sdxl, "euler", 2, **kwargs, prompt_embeds=torch.cat(embeds, -1),
                       pooled_prompt_embeds=pooled, prompt=None)  # fmt: skip
    assert (ours.pixels - theirs).abs().mean() < TOL


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_img2img_matches_diffusers(tiny_sdxl, scheduler):
    image = source_image()
    kwargs = dict(
        prompt=PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=5, guidance_scale=5.0, strength=0.6
    )
    ours = generate(tiny_sdxl, **kwargs, init_image=image, scheduler=scheduler, seed=7)
    theirs = reference(StableDiffusionXLImg2ImgPipeline, tiny_sdxl, scheduler, 7, **kwargs, image=image)
    assert ours.pixels.shape == theirs.shape == (2, 3, 32, 48)
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_refiner_img2img_with_aesthetic_scores_matches_diffusers():
    refiner = tiny_sdxl_pipeline(refiner=True, seed=2)
    image = source_image()
    kwargs = dict(prompt=PROMPTS[:1], negative_prompt=NEGATIVES[:1], num_inference_steps=5, guidance_scale=5.0,
                  strength=0.5, aesthetic_score=7.5, negative_aesthetic_score=1.0)  # fmt: skip
    ours = generate(refiner, **kwargs, init_image=image, scheduler="euler", seed=5)
    theirs = reference(StableDiffusionXLImg2ImgPipeline, refiner, "euler", 5, **kwargs, image=image)
    assert (ours.pixels - theirs).abs().mean() < TOL
    plain = generate(
        refiner, **{**kwargs, "aesthetic_score": 6.0}, init_image=image, scheduler="euler", seed=5
    )
    assert (ours.pixels - plain.pixels).abs().mean() > 10 * TOL


@pytest.mark.parametrize("channels", [4, 9])
def test_inpaint_matches_diffusers(channels):
    pipe = tiny_sdxl_pipeline(in_channels=channels, seed=1)
    image, mask = source_image(), half_mask()
    kwargs = dict(prompt=PROMPTS[:1], negative_prompt=NEGATIVES[:1], num_inference_steps=4, guidance_scale=5.0,
                  strength=1.0)  # fmt: skip
    ours = generate(pipe, **kwargs, init_image=image, mask_image=mask, scheduler="euler", seed=9)
    theirs = reference(StableDiffusionXLInpaintPipeline, pipe, "euler", 9, **kwargs, image=image, mask_image=mask,
                       height=32, width=48)  # fmt: skip
    assert ours.pixels.shape == theirs.shape
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_sdxl_only_settings_are_refused_on_sd1(tiny):
    with pytest.raises(InputError, match="original_size conditions SDXL models only; this model is sd1"):
        generate(tiny, "a cat", original_size=(64, 64), num_inference_steps=1)
    with pytest.raises(InputError, match="aesthetic_score conditions the SDXL refiner only"):
        generate(tiny_sdxl_pipeline(), "a cat", aesthetic_score=7.0, num_inference_steps=1)
    with pytest.raises(InputError, match=r"target_size must be two integers \(height, width\)"):
        SamplingParams(target_size=(0, 64)).validate()


def test_folder_round_trip_loads_in_diffusers_and_sdlab(tiny_sdxl, tiny_sdxl_dir):
    """sdlab's folder is a diffusers SDXL folder: diffusers loads it, and both give the same pixels."""
    loaded = load_pipeline(tiny_sdxl_dir, device="cpu", dtype="float32")
    assert loaded.family == "sdxl" and loaded.force_zeros_for_empty_prompt
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=3, guidance_scale=4.0, height=32, width=32)
    ours = generate(loaded, **kwargs, scheduler="euler", seed=4)
    ref = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl_dir, local_files_only=True, add_watermarker=False
    )
    ref.set_progress_bar_config(disable=True)
    theirs = ref(**kwargs, generator=[torch.Generator().manual_seed(4)], output_type="pt").images
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_deep_cache_runs_sdxl_with_its_added_embedding(tiny_sdxl):
    """The shallow pass adds SDXL's pooled-text and size embedding: without it the image would drift far."""
    kwargs = dict(num_inference_steps=6, guidance_scale=1.0, scheduler="euler", seed=1)
    whole = generate(tiny_sdxl, PROMPTS[0], **kwargs, deep_cache=1)
    cached = generate(tiny_sdxl, PROMPTS[0], **kwargs, deep_cache=2)
    assert cached.params.deep_cache == 2
    assert 0 < (whole.pixels - cached.pixels).abs().mean() < 0.05


@pytest.mark.parametrize("refiner", [False, True])
def test_single_file_round_trip_in_diffusers_and_sdlab(tmp_path, refiner):
    """sdlab's exporter writes SDXL's original layout (`conditioner.embedders.*`, `label_emb`); diffusers'
    `from_single_file` with a local config and sdlab's loader both read it back to the same pixels."""
    from diffusers import StableDiffusionXLImg2ImgPipeline as Img2Img
    from safetensors.torch import load_file

    from sdlab.loading.export import save_single_file
    from sdlab.loading.folder import save_folder

    pipe = tiny_sdxl_pipeline(refiner=refiner, seed=3)
    path = save_single_file(pipe, tmp_path / "tiny-xl.safetensors")
    keys = load_file(path)
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    bigg = "conditioner.embedders.0.model." if refiner else "conditioner.embedders.1.model."
    assert bigg + "text_projection" in keys
    assert refiner or "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    config = save_folder(pipe, tmp_path / "config")

    loaded = load_pipeline(path, config=config, device="cpu", dtype="float32")
    assert loaded.family == pipe.family
    for ours, theirs in zip(loaded.modules(), pipe.modules(), strict=True):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    cls = Img2Img if refiner else StableDiffusionXLPipeline
    ref = cls.from_single_file(path, config=str(config), local_files_only=True, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPTS[0], num_inference_steps=3, guidance_scale=4.0)
    kwargs.update(image=source_image((32, 32)), strength=0.7) if refiner else kwargs.update(
        height=32, width=32
    )
    ours = generate(loaded, **{"init_image" if k == "image" else k: v for k, v in kwargs.items()}, scheduler="euler",
                    seed=4)  # fmt: skip
    theirs = ref(**kwargs, generator=[torch.Generator().manual_seed(4)], output_type="pt").images
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_detects_sdxl_files_by_their_keys():
    from sdlab.loading.export import original_state_dict
    from sdlab.loading.single_file import detect_model_type

    for refiner, channels, expected in (
        (False, 4, "sdxl"),
        (False, 9, "sdxl-inpaint"),
        (True, 4, "sdxl-refiner"),
    ):
        pipe = tiny_sdxl_pipeline(in_channels=channels, refiner=refiner)
        keys = original_state_dict(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
        assert detect_model_type(keys) == expected


def make_sdxl_lora(pipe, path, *, kohya: bool, rank: int = 4, seed: int = 0):
    """A LoRA with random weights on `pipe`'s UNet attention and both text encoders' attention, written in
    diffusers' layout (`unet.`, `text_encoder.`, `text_encoder_2.`) or kohya's SDXL layout (`lora_unet_*`
    in the original UNet's block names, `lora_te1_*`, `lora_te2_*`, with `.alpha`)."""
    import copy

    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from sdlab.loading.export import unet_to_original
    from sdlab.lora import TEXT_TARGETS, UNET_TARGETS, add_text_encoder_adapter

    torch.manual_seed(seed)
    unet, te1, te2 = (copy.deepcopy(m) for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2))
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS, init_lora_weights=False)
    )
    for encoder in (te1, te2):
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS, init_lora_weights=False)
        add_text_encoder_adapter(encoder, config)
    layers = [convert_state_dict_to_diffusers(get_peft_model_state_dict(m)) for m in (unet, te1, te2)]
    layers[1] = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in layers[1].items()}
    if not kohya:
        StableDiffusionXLPipeline.save_lora_weights(
            path.parent, unet_lora_layers=layers[0], text_encoder_lora_layers=layers[1],
            text_encoder_2_lora_layers=layers[2], weight_name=path.name,
        )  # fmt: skip
        return path
    tensors = {}
    for prefix, state in zip(("lora_unet_", "lora_te1_", "lora_te2_"), layers, strict=True):
        for key, value in state.items():
            module, kind = key.rsplit(".lora.", 1)[0] if ".lora." in key else key.rsplit(".lora_", 1)[0], key
            if prefix == "lora_unet_":
                module = next(
                    iter(unet_to_original({module + ".weight": value}, pipe.unet.config))
                ).removesuffix(".weight")
            name = prefix + module.replace(".", "_")
            updown = "lora_down" if kind.endswith(("lora_A.weight", ".down.weight")) else "lora_up"
            tensors[f"{name}.{updown}.weight"] = value.contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("kohya", [False, True])
def test_lora_matches_diffusers_load_lora_weights(tmp_path, kohya):
    """An SDXL LoRA on the UNet and both text encoders, in diffusers' layout or kohya's (SGM block names,
    lora_te1_/lora_te2_), at weight 0.7: the same pixels as diffusers' `load_lora_weights` + `set_adapters`."""
    from sdlab.lora import load_lora, unload_lora

    pipe = tiny_sdxl_pipeline(seed=4)
    path = make_sdxl_lora(pipe, tmp_path / "style.safetensors", kohya=kohya)
    if kohya:
        from safetensors.torch import load_file

        keys = load_file(path)
        assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for k in keys)
        assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    kwargs = dict(prompt=PROMPTS[:1], negative_prompt=NEGATIVES[:1], num_inference_steps=3, guidance_scale=5.0,
                  height=32, width=32)  # fmt: skip
    before = generate(pipe, **kwargs, scheduler="euler", seed=2)
    name = load_lora(pipe, path, 0.7)
    ours = generate(pipe, **kwargs, scheduler="euler", seed=2)
    other = tiny_sdxl_pipeline(seed=4)
    ref = StableDiffusionXLPipeline(
        vae=other.vae, text_encoder=other.text_encoder, text_encoder_2=other.text_encoder_2,
        tokenizer=other.tokenizer, tokenizer_2=other.tokenizer_2, unet=other.unet,
        scheduler=make_scheduler("euler", other.scheduler_config), add_watermarker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path), adapter_name="style")
    ref.set_adapters(["style"], [0.7])
    theirs = ref(**kwargs, generator=[torch.Generator().manual_seed(2)], output_type="pt").images
    assert (ours.pixels - before.pixels).abs().mean() > 10 * TOL  # the LoRA changes the image
    assert (ours.pixels - theirs).abs().mean() < TOL
    unload_lora(pipe, name)
    assert torch.equal(generate(pipe, **kwargs, scheduler="euler", seed=2).pixels, before.pixels)


def test_an_sdxl_embedding_teaches_both_encoders(tmp_path, tiny_sdxl):
    """{"clip_l": (K, 32), "clip_g": (K, 48)}: each encoder gets its own vectors under one token, and the
    prompt equals one whose token embeddings were set by hand; an SD 1.x embedding is refused."""
    import copy

    from safetensors.torch import save_file

    from sdlab.embeddings import load_embedding
    from sdlab.service.networks import extra_networks

    g = torch.Generator().manual_seed(0)
    vectors = {"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 48, generator=g)}
    save_file(vectors, str(tmp_path / "sparkle.safetensors"))
    p = SamplingParams(height=32, width=32, original_size=(32, 32), target_size=(32, 32))
    with extra_networks(tiny_sdxl, embeddings=[(tmp_path / "sparkle.safetensors", None)]) as pipe:
        cond, _ = encode_conditioning(pipe, p, ["a sparkle cat"], None)
        by_hand = copy.deepcopy(pipe)
    for tokenizer, encoder, key in ((by_hand.tokenizer, by_hand.text_encoder, "clip_l"),
                                    (by_hand.tokenizer_2, by_hand.text_encoder_2, "clip_g")):  # fmt: skip
        ids = tokenizer.convert_tokens_to_ids(["sparkle", "sparkle_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], vectors[key])
    assert len(tiny_sdxl.tokenizer) == len(tiny_sdxl.tokenizer_2) == 49408  # restored after the request
    plain, _ = encode_conditioning(tiny_sdxl, p, ["a sparkle cat"], None)
    assert not torch.allclose(cond.embeds, plain.embeds)
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "old.safetensors"))
    with pytest.raises(
        InputError, match="is an SD 1.x/2.x embedding .one set of vectors., and this model is sdxl"
    ):
        load_embedding(copy.deepcopy(tiny_sdxl), tmp_path / "old.safetensors")


@pytest.mark.parametrize("steps", [1, 4])
def test_turbo_style_run_is_one_unet_call_per_step_and_matches_diffusers(tiny_sdxl, steps):
    """SDXL-Turbo's card: Euler a, trailing timesteps (A1111's "SGM Uniform"), guidance 0. One UNet call a
    step, and diffusers' pipeline with the scheduler so configured gives the same pixels."""
    from diffusers import EulerAncestralDiscreteScheduler

    calls = []
    hook = tiny_sdxl.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        ours = generate(tiny_sdxl, PROMPTS[0], num_inference_steps=steps, guidance_scale=0.0, scheduler="euler_a",
                        timestep_spacing="trailing", seed=6)  # fmt: skip
    finally:
        hook.remove()
    assert calls == [1] * steps and ours.unet_evaluations == steps
    ref = StableDiffusionXLPipeline(
        vae=tiny_sdxl.vae, text_encoder=tiny_sdxl.text_encoder, text_encoder_2=tiny_sdxl.text_encoder_2,
        tokenizer=tiny_sdxl.tokenizer, tokenizer_2=tiny_sdxl.tokenizer_2, unet=tiny_sdxl.unet, add_watermarker=False,
        scheduler=EulerAncestralDiscreteScheduler.from_config(tiny_sdxl.scheduler_config, timestep_spacing="trailing"),
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    theirs = ref(PROMPTS[0], num_inference_steps=steps, guidance_scale=0.0, height=32, width=32,
                 generator=[torch.Generator().manual_seed(6)], output_type="pt").images  # fmt: skip
    assert (ours.pixels - theirs).abs().mean() < TOL
    leading = generate(
        tiny_sdxl, PROMPTS[0], num_inference_steps=steps, guidance_scale=0.0, scheduler="euler_a", seed=6
    )
    assert (ours.pixels - leading.pixels).abs().mean() > 10 * TOL  # the spacing reached the scheduler


def test_trailing_spacing_is_a1111s_sgm_uniform_in_the_infotext(tmp_path, tiny_sdxl):
    from sdlab.images import read_png_text
    from sdlab.outputs import parameters_recipe, save_result

    result = generate(tiny_sdxl, "a cat", num_inference_steps=2, guidance_scale=0.0, scheduler="euler_a",
                      timestep_spacing="trailing", seed=1)  # fmt: skip
    (path,) = save_result(result, tmp_path / "turbo.png", tiny_sdxl)
    text = read_png_text(path)["parameters"]
    assert "Sampler: Euler a, Schedule type: SGM Uniform" in text
    recipe = parameters_recipe(text, "turbo.png")
    assert recipe["scheduler"] == "euler_a" and recipe["timestep_spacing"] == "trailing"


def test_a_lightning_preset_is_its_cards_settings_from_the_cli(tmp_path, tiny_sdxl, tiny_sdxl_dir):
    """`--preset sdxl-lightning-4step` (ByteDance's card: Euler, trailing, 4 steps, no CFG) on a model that
    recommends nothing: four single UNet passes, the pixels of those settings given by hand, and the
    infotext an A1111 user would type them from."""
    from sdlab.cli.main import main
    from sdlab.images import read_png_text

    calls = []
    hook = tiny_sdxl.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        preset = generate(tiny_sdxl, "a cat", preset="sdxl-lightning-4step", seed=3)
    finally:
        hook.remove()
    assert calls == [1] * 4
    by_hand = generate(tiny_sdxl, "a cat", scheduler="euler", timestep_spacing="trailing", num_inference_steps=4,
                       guidance_scale=0.0, seed=3)  # fmt: skip
    assert torch.equal(preset.pixels, by_hand.pixels)
    out = tmp_path / "lightning.png"
    assert main(["generate", "a cat", "--model", str(tiny_sdxl_dir), "--preset", "sdxl-lightning-4step",
                 "--seed", "3", "-o", str(out)]) == 0  # fmt: skip
    text = read_png_text(out)["parameters"]
    assert "Steps: 4, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: 0.0" in text
