"""Teaching SDXL (issue 20): LoRA, textual inversion and DreamBooth on the tiny SDXL through the one
training loop, with diffusers' SDXL training scripts' conditioning as the oracle and diffusers' SDXL
pipeline loading what they write."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from test_parity import TOL
from test_teach import common, fixed_loss, losses

from sdlab.datasets import crop_geometry, read_folder
from sdlab.loading import load_pipeline
from sdlab.sampling.loop import generate
from sdlab.sampling.schedulers import make_scheduler
from sdlab.training.data import CaptionEncoder

PROMPT = "a bright square"
KWARGS = dict(num_inference_steps=3, guidance_scale=5.0, height=32, width=32)


def diffusers_xl(folder) -> StableDiffusionXLPipeline:
    ref = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    ref.scheduler = make_scheduler("euler", ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    return ref


def diffusers_pixels(ref: StableDiffusionXLPipeline, prompt: str = PROMPT) -> torch.Tensor:
    return ref(prompt, **KWARGS, generator=[torch.Generator().manual_seed(2)], output_type="pt").images


def test_training_conditioning_is_diffusers_sdxl_scripts(tiny_sdxl, tmp_path):
    """Penultimate layers of both encoders, the second's pooled embedding (diffusers' `encode_prompt`), and
    size ids from each image's original size and centre-crop corner (`train_dreambooth_lora_sdxl.py`)."""
    Image.new("RGB", (48, 32)).save(tmp_path / "wide.png")
    Image.new("RGB", (20, 30)).save(tmp_path / "tall.png")
    items = read_folder(tmp_path, require_captions=False)
    geometry = crop_geometry(items, 32)
    # tall: 20x30 scaled to 32x48, top (48 - 32) / 2 = 8; wide: 48x32 at scale 1, left (48 - 32) / 2 = 8
    assert geometry.tolist() == [[30, 20, 8, 0], [32, 48, 0, 8]]

    cond = CaptionEncoder(tiny_sdxl)([PROMPT, ""], geometry)
    ref = StableDiffusionXLPipeline(
        vae=tiny_sdxl.vae, text_encoder=tiny_sdxl.text_encoder, text_encoder_2=tiny_sdxl.text_encoder_2,
        tokenizer=tiny_sdxl.tokenizer, tokenizer_2=tiny_sdxl.tokenizer_2, unet=tiny_sdxl.unet,
        scheduler=make_scheduler("euler", tiny_sdxl.scheduler_config), add_watermarker=False,
    )  # fmt: skip
    embeds, _, pooled, _ = ref.encode_prompt([PROMPT, ""], do_classifier_free_guidance=False)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.pooled, pooled)
    ids = [
        ref._get_add_time_ids(tuple(row[:2]), tuple(row[2:]), (32, 32), torch.float32, pooled.shape[-1])
        for row in geometry.int().tolist()
    ]
    assert torch.equal(cond.time_ids, torch.cat(ids))


def test_lora_on_sdxl_fits_loads_in_diffusers_and_resumes_bit_for_bit(tiny_sdxl_dir, squares_dir, tmp_path):
    """LoRA on the UNet and both text encoders: the fit improves, diffusers' `load_lora_weights` draws the
    same pixels as sdlab with the file, and a run stopped at step 8 and resumed equals one run straight."""
    from safetensors.torch import load_file

    from sdlab.lora import load_lora
    from sdlab.training.lora import LoraTrainConfig, lora

    def config(folder, **changes):
        cfg = common(tiny_sdxl_dir, squares_dir, folder, steps=16, checkpoint_every=8, learning_rate=2e-2)
        return LoraTrainConfig(**{**cfg, **changes}, rank=4, train_text_encoder=True)

    out = lora(config(tmp_path / "a"))
    lora(config(tmp_path / "b", steps=8))
    resumed = lora(config(tmp_path / "b", resume="latest"))
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "b" / "run")
    straight, again = load_file(out), load_file(resumed)
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)
    assert {k.split(".")[0] for k in straight} == {"unet", "text_encoder", "text_encoder_2"}

    base = load_pipeline(tiny_sdxl_dir, device="cpu")
    before = fixed_loss(base, squares_dir)
    load_lora(base, out)
    assert fixed_loss(base, squares_dir) < 0.95 * before
    ours = generate(base, PROMPT, **KWARGS, scheduler="euler", seed=2)
    ref = diffusers_xl(tiny_sdxl_dir)
    plain = diffusers_pixels(ref)
    ref.load_lora_weights(str(out))
    theirs = diffusers_pixels(ref)
    assert (theirs - plain).abs().mean() > 10 * TOL  # the LoRA changes diffusers' image
    assert (ours.pixels - theirs).abs().mean() < TOL


def test_textual_inversion_on_sdxl_trains_both_encoders_rows_only(tiny_sdxl_dir, squares_dir, tmp_path):
    """The word is added to both encoders; only its rows move; the clip_l/clip_g file loads in sdlab, and
    diffusers' two files in diffusers give the same pixels."""
    from safetensors.torch import load_file

    from sdlab.embeddings import load_embedding
    from sdlab.training.textual_inversion import TextualInversionConfig, textual_inversion

    base = load_pipeline(tiny_sdxl_dir, device="cpu")
    rows = [
        e.get_input_embeddings().weight.detach().clone() for e in (base.text_encoder, base.text_encoder_2)
    ]
    cfg = TextualInversionConfig(
        **common(tiny_sdxl_dir, squares_dir, tmp_path, steps=20, learning_rate=5e-2),
        token="<sq>", initializer_token="square", num_vectors=2, prompts="caption",
    )  # fmt: skip
    out = textual_inversion(cfg)
    assert out.name == "sq.safetensors"
    learned = load_file(out)
    assert {k: v.shape for k, v in learned.items()} == {"clip_l": (2, 32), "clip_g": (2, 48)}
    square = base.tokenizer("square", add_special_tokens=False).input_ids[0]
    for key, before in zip(("clip_l", "clip_g"), rows, strict=True):
        assert not torch.allclose(learned[key], before[square].expand(2, -1))  # both sets trained

    pipe = load_pipeline(tiny_sdxl_dir, device="cpu")
    prompt = "a bright square <sq>"
    plain_loss = fixed_loss(pipe, squares_dir, prompt)
    assert load_embedding(pipe, out, token="<sq>") == "<sq>"
    for encoder, before in zip((pipe.text_encoder, pipe.text_encoder_2), rows, strict=True):
        assert torch.equal(encoder.get_input_embeddings().weight[: len(before)], before)
    assert fixed_loss(pipe, squares_dir, prompt) < plain_loss
    ours = generate(pipe, prompt, **KWARGS, scheduler="euler", seed=2)
    ref = diffusers_xl(tiny_sdxl_dir)
    run = tmp_path / "run"
    ref.load_textual_inversion(str(run / "learned_embeds.safetensors"))
    ref.load_textual_inversion(
        str(run / "learned_embeds_2.safetensors"), text_encoder=ref.text_encoder_2, tokenizer=ref.tokenizer_2
    )
    assert (ours.pixels - diffusers_pixels(ref, prompt)).abs().mean() < TOL


def test_dreambooth_on_sdxl_writes_a_model_diffusers_loads(tiny_sdxl_dir, squares_dir, tmp_path):
    """Full DreamBooth with both text encoders and prior preservation (class images by the base SDXL):
    the subject's fit improves, and diffusers' SDXL pipeline draws sdlab's pixels from the folder."""
    from sdlab.training.dreambooth import DreamBoothConfig, dreambooth

    before = fixed_loss(load_pipeline(tiny_sdxl_dir, device="cpu"), squares_dir, "a sks square")
    cfg = DreamBoothConfig(
        **common(tiny_sdxl_dir, squares_dir, tmp_path, steps=10, learning_rate=1e-3),
        instance_prompt="a sks square", class_prompt="a square", prior_preservation=True, num_class_images=2,
        train_text_encoder=True,
    )  # fmt: skip
    model = dreambooth(cfg)
    pipe = load_pipeline(model, device="cpu")
    assert pipe.family == "sdxl"
    assert fixed_loss(pipe, squares_dir, "a sks square") < before
    ours = generate(pipe, "a sks square", **KWARGS, scheduler="euler", seed=2)
    assert (ours.pixels - diffusers_pixels(diffusers_xl(model), "a sks square")).abs().mean() < TOL
    base = generate(
        load_pipeline(tiny_sdxl_dir, device="cpu"), "a sks square", **KWARGS, scheduler="euler", seed=2
    )
    assert np.abs((ours.pixels - base.pixels).numpy()).mean() > 10 * TOL


def test_the_sdxl_refiner_is_refused_in_one_sentence(capsys, tmp_path, squares_dir):
    from conftest import tiny_sdxl_pipeline

    from sdlab.cli.main import main
    from sdlab.loading.folder import save_folder

    save_folder(tiny_sdxl_pipeline(refiner=True), tmp_path / "refiner")
    code = main(["lora", str(squares_dir), "--model", str(tmp_path / "refiner"), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "is an SDXL refiner, conditioned on aesthetic scores" in err
    assert "Traceback" not in err
