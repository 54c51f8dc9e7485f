"""The teaching recipes on the tiny model: each improves its target, its output loads in diffusers' own
pipelines and changes them, and training is resumable, atomic and stops cleanly on NaN."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from sdlab.errors import InputError, TrainingError
from sdlab.loading import load_pipeline
from sdlab.training.data import CaptionEncoder, CaptionTokens, diffusion_loss, encode_text
from sdlab.training.recipe import training_noise_scheduler


def common(tiny_dir, squares_dir, tmp_path, **overrides):
    base = dict(data=str(squares_dir), model=str(tiny_dir), output=str(tmp_path / "run"), steps=12, batch_size=4,
                checkpoint_every=6, seed=0)  # fmt: skip
    return {**base, **overrides}


def fixed_loss(pipe, squares_dir, prompt: str = "a bright square") -> float:
    """The diffusion loss on every training image at fixed noise and timesteps: lower = better fit."""
    from sdlab.datasets import read_folder
    from sdlab.training.recipe import latent_data

    items = read_folder(squares_dir, require_captions=False)
    data = latent_data(pipe, items, [prompt] * len(items))
    g = torch.Generator().manual_seed(123)
    latents = data._mean * pipe.vae.config.scaling_factor
    losses = []
    with torch.no_grad():
        cond = CaptionEncoder(pipe)([prompt] * len(latents), data.geometry)
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(100, 900, (len(latents),), generator=g)
            losses.append(
                diffusion_loss(pipe.unet, training_noise_scheduler(pipe), latents, cond, noise, t).mean()
            )
    return float(torch.stack(losses).mean())


def losses(run) -> list[float]:
    with (run / "loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def diffusers_image(folder_or_pipe, prompt="a bright square"):
    pipe = folder_or_pipe
    if not isinstance(pipe, StableDiffusionPipeline):
        pipe = StableDiffusionPipeline.from_pretrained(
            pipe, safety_checker=None, requires_safety_checker=False
        )
    g = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=3, generator=g, output_type="np").images


def test_finetune_fits_the_data_and_diffusers_loads_the_result(tiny_dir, squares_dir, tmp_path):
    from sdlab.training.finetune import FinetuneConfig, finetune

    before = fixed_loss(load_pipeline(tiny_dir, device="cpu"), squares_dir)
    model = finetune(
        FinetuneConfig(**common(tiny_dir, squares_dir, tmp_path, steps=30, learning_rate=1e-3, ema_decay=0))
    )
    after = fixed_loss(load_pipeline(model, device="cpu"), squares_dir)
    assert after < 0.8 * before
    assert np.abs(diffusers_image(model) - diffusers_image(tiny_dir)).max() > 1e-3


def test_resumed_run_equals_an_uninterrupted_one(tiny_dir, squares_dir, tmp_path):
    from sdlab.training.finetune import FinetuneConfig, finetune

    straight = finetune(FinetuneConfig(**common(tiny_dir, squares_dir, tmp_path / "a", ema_decay=0.9)))
    cfg = common(tiny_dir, squares_dir, tmp_path / "b", ema_decay=0.9)
    finetune(FinetuneConfig(**{**cfg, "steps": 6}))  # stops at step 6 (a checkpoint)
    cfg["output"] = str(tmp_path / "b" / "run")
    resumed = finetune(FinetuneConfig(**cfg, resume="latest"))
    assert losses(tmp_path / "a" / "run") == pytest.approx(losses(tmp_path / "b" / "run"), abs=1e-6)
    a, b = load_pipeline(straight, device="cpu"), load_pipeline(resumed, device="cpu")
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_a_crash_during_a_save_resumes_from_the_last_complete_checkpoint(
    tiny_dir, squares_dir, tmp_path, monkeypatch
):
    from sdlab.training.checkpoints import CheckpointManager
    from sdlab.training.finetune import FinetuneConfig, finetune

    cfg = common(tiny_dir, squares_dir, tmp_path, steps=9, checkpoint_every=3, ema_decay=0)
    real_save = CheckpointManager.save

    def dying_save(self, step):
        if step == 6:  # killed half-way through writing the step-6 checkpoint
            partial = self.root / ".step-000006.tmp-999"
            partial.mkdir(parents=True)
            (partial / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
        return real_save(self, step)

    monkeypatch.setattr(CheckpointManager, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(**cfg))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-")) == ["step-000003"]
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    finetune(FinetuneConfig(**cfg, resume="latest"))
    straight = common(tiny_dir, squares_dir, tmp_path / "straight", steps=9, checkpoint_every=3, ema_decay=0)
    finetune(FinetuneConfig(**straight))
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "straight" / "run"), abs=1e-6)
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-")) == [
        "step-000006",
        "step-000009",
    ]


def test_bad_resume_nan_loss_and_broken_images_stop_with_one_sentence(
    tiny_dir, squares_dir, tmp_path, monkeypatch
):
    import sdlab.training.recipe as recipe
    from sdlab.training.finetune import FinetuneConfig, finetune

    with pytest.raises(InputError, match="not a complete sdlab checkpoint"):
        finetune(FinetuneConfig(**common(tiny_dir, squares_dir, tmp_path, resume=str(tmp_path / "nowhere"))))
    with pytest.raises(InputError, match="no complete checkpoint"):
        finetune(FinetuneConfig(**common(tiny_dir, squares_dir, tmp_path / "x", resume="latest")))

    real = recipe.diffusion_loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 8 else loss

    monkeypatch.setattr(recipe, "diffusion_loss", poisoned)
    with pytest.raises(
        TrainingError, match="loss became nan at step 8; the last complete checkpoint.*step-000006"
    ):
        finetune(FinetuneConfig(**common(tiny_dir, squares_dir, tmp_path / "nan", ema_decay=0)))

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (32, 32)).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="bad.png"):
        finetune(FinetuneConfig(**common(tiny_dir, broken, tmp_path / "b")))


def test_textual_inversion_captions_take_the_token_in_place_or_appended():
    from sdlab.training.textual_inversion import caption_with_token

    words = "<tiny> <tiny>_1"
    assert (
        caption_with_token("a <tiny> handwritten digit 3", "<tiny>", words)
        == "a <tiny> <tiny>_1 handwritten digit 3"
    )
    assert (
        caption_with_token("a handwritten digit 3", "<tiny>", words)
        == "a handwritten digit 3 <tiny> <tiny>_1"
    )
    # a longer word that merely contains the token is not the token
    assert caption_with_token("a <tiny>x digit", "<tiny>", "<tiny>") == "a <tiny>x digit <tiny>"


def test_textual_inversion_trains_only_its_rows_and_loads_in_diffusers(tiny_dir, squares_dir, tmp_path):
    from safetensors.torch import load_file

    from sdlab.embeddings import load_embedding
    from sdlab.training.textual_inversion import TextualInversionConfig, textual_inversion

    base = load_pipeline(tiny_dir, device="cpu")
    base_rows = base.text_encoder.get_input_embeddings().weight.detach().clone()
    cfg = TextualInversionConfig(
        **common(tiny_dir, squares_dir, tmp_path, steps=25, learning_rate=5e-2),
        token="<sq>", initializer_token="square", num_vectors=2, prompts="caption", a1111=True,
    )  # fmt: skip
    out = textual_inversion(cfg)
    learned = load_file(str(out))
    assert list(learned) == ["<sq>"] and learned["<sq>"].shape == (2, 32)

    pipe = load_pipeline(tiny_dir, device="cpu")
    before = fixed_loss(pipe, squares_dir, "a bright square <sq>")  # unknown word: split into sub-tokens
    assert load_embedding(pipe, out) == "<sq>"
    rows = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(rows[: len(base_rows)], base_rows)  # every other row bit-identical
    assert fixed_loss(pipe, squares_dir, "a bright square <sq>") < before
    # A1111 format, named after the file
    a1111 = load_pipeline(tiny_dir, device="cpu")
    assert load_embedding(a1111, tmp_path / "run" / "sq.safetensors") == "sq"
    # diffusers' own loader reads the file and the token changes its images
    ref = StableDiffusionPipeline.from_pretrained(
        tiny_dir, safety_checker=None, requires_safety_checker=False
    )
    plain = diffusers_image(ref, "a bright square <sq>")
    ref.load_textual_inversion(str(out))
    assert np.abs(diffusers_image(ref, "a bright square <sq>") - plain).max() > 1e-3
    # and sdlab draws the same image diffusers does with it
    ours = pipe.generate(
        "a bright square <sq>", num_inference_steps=3, seed=0, scheduler="pndm", guidance_scale=7.5
    )
    theirs = diffusers_image(ref, "a bright square <sq>")
    assert np.abs(ours.pixels[0].permute(1, 2, 0).numpy() - theirs[0]).mean() < 1e-3


def test_lora_improves_the_fit_and_loads_in_diffusers(tiny_dir, squares_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from sdlab.lora import load_lora
    from sdlab.training.lora import LoraTrainConfig, lora

    before = fixed_loss(load_pipeline(tiny_dir, device="cpu"), squares_dir)
    cfg = LoraTrainConfig(
        **common(tiny_dir, squares_dir, tmp_path, steps=30, learning_rate=1e-2),
        rank=4,
        train_text_encoder=True,
    )
    out = lora(cfg)
    pipe = load_pipeline(tiny_dir, device="cpu")
    plain_text = encode_text(CaptionTokens(pipe.tokenizer), pipe.text_encoder, ["a bright square"])
    load_lora(pipe, out)
    assert fixed_loss(pipe, squares_dir) < 0.95 * before
    assert not torch.allclose(
        encode_text(CaptionTokens(pipe.tokenizer), pipe.text_encoder, ["a bright square"]), plain_text
    )
    zero = load_pipeline(tiny_dir, device="cpu")
    load_lora(zero, out, weight=0.0)
    assert fixed_loss(zero, squares_dir) == pytest.approx(before, rel=1e-5)
    # diffusers' own pipeline loads the UNet layers (its text-encoder path needs peft >= 0.22, not yet on PyPI)
    layers = load_file(str(out))
    assert any(k.startswith("text_encoder.text_model.") for k in layers)
    save_file(
        {k: v for k, v in layers.items() if k.startswith("unet.")}, str(tmp_path / "unet_only.safetensors")
    )
    ref = StableDiffusionPipeline.from_pretrained(
        tiny_dir, safety_checker=None, requires_safety_checker=False
    )
    plain = diffusers_image(ref)
    ref.load_lora_weights(str(tmp_path / "unet_only.safetensors"))
    assert np.abs(diffusers_image(ref) - plain).max() > 1e-3


def test_dreambooth_generates_and_reuses_class_images(tiny_dir, squares_dir, tmp_path):
    from sdlab.training.dreambooth import DreamBoothConfig, class_images, dreambooth

    pipe = load_pipeline(tiny_dir, device="cpu")
    folder = tmp_path / "class"
    first = class_images(pipe, "a square", folder, 2, batch=2)
    stamp = {p.path.name: p.path.stat().st_mtime_ns for p in first}
    again = class_images(pipe, "a square", folder, 3, batch=2)  # tops up one, reuses two
    assert len(again) == 3 and all(p.path.stat().st_mtime_ns == stamp[p.path.name] for p in again[:2])
    assert json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])["text"] == "a square"

    before = fixed_loss(pipe, squares_dir, "a sks square")
    cfg = DreamBoothConfig(
        **common(tiny_dir, squares_dir, tmp_path, steps=20, learning_rate=1e-3),
        instance_prompt="a sks square", class_prompt="a square", prior_preservation=True,
        num_class_images=3, class_dir=str(folder),
    )  # fmt: skip
    model = dreambooth(cfg)
    assert fixed_loss(load_pipeline(model, device="cpu"), squares_dir, "a sks square") < before
    assert len(list(folder.glob("*.png"))) == 3  # the cache was enough

    # --lora: the same recipe writes a LoRA file instead of a model, and the base untouched + LoRA fits better
    from sdlab.lora import load_lora

    cfg.lora, cfg.rank, cfg.output = True, 4, str(tmp_path / "db-lora")
    out = dreambooth(cfg)
    assert out.name == "pytorch_lora_weights.safetensors"
    pipe = load_pipeline(tiny_dir, device="cpu")
    load_lora(pipe, out)
    assert fixed_loss(pipe, squares_dir, "a sks square") < before


DRIVER = """
import json, sys
from sdlab.training.finetune import FinetuneConfig, finetune
finetune(FinetuneConfig(**json.loads(open(sys.argv[1]).read())))
"""


def test_two_processes_take_the_same_steps_as_one_on_the_same_global_batch(tiny_dir, squares_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = {}
    for processes in (1, 2):
        cfg = tmp_path / f"cfg{processes}.json"
        cfg.write_text(
            json.dumps(common(tiny_dir, squares_dir, tmp_path / str(processes), steps=4, ema_decay=0))
        )
        if processes == 1:
            command = [sys.executable, str(driver), str(cfg)]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command = [
                sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), str(driver), str(cfg),
            ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[processes] = load_pipeline(tmp_path / str(processes) / "run" / "model", device="cpu")
    assert losses(tmp_path / "1" / "run") == pytest.approx(losses(tmp_path / "2" / "run"), abs=1e-5)
    base = load_pipeline(tiny_dir, device="cpu")
    moved = False
    for p1, p2, p0 in zip(
        runs[1].unet.parameters(), runs[2].unet.parameters(), base.unet.parameters(), strict=True
    ):
        assert torch.allclose(p1, p2, atol=1e-5)
        moved |= not torch.allclose(p1, p0)
    assert moved


def test_resuming_with_another_option_is_one_sentence_naming_it(tiny_dir, squares_dir, tmp_path, capsys):
    """Issue 11: a LoRA run with --rank 4 resumed with --rank 8 stopped with a 26 KB traceback."""
    from sdlab.cli.main import main

    run = [
        "lora",
        str(squares_dir),
        "-o",
        str(tmp_path / "lora"),
        "--model",
        str(tiny_dir),
        "--batch-size",
        "4",
    ]
    assert main([*run, "--rank", "4", "--steps", "2", "--checkpoint-every", "1"]) == 0
    capsys.readouterr()
    assert main([*run, "--rank", "8", "--steps", "2", "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "--rank is 8, but the checkpoint" in err and "was trained with --rank 4" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    # what may change on a resume: how long it trains, and how often it saves
    assert main([*run, "--rank", "4", "--steps", "3", "--checkpoint-every", "3", "--resume", "latest"]) == 0


@pytest.mark.parametrize(
    ("recipe", "first", "changed", "flag"),
    [
        ("finetune", {}, {"learning_rate": 3e-4}, "--learning-rate"),
        ("textual_inversion", {"token": "<sq>"}, {"token": "<sq>", "num_vectors": 2}, "--num-vectors"),
        (
            "dreambooth",
            {"instance_prompt": "a sks square"},
            {"instance_prompt": "a sks cube"},
            "--instance-prompt",
        ),
    ],
)
def test_every_recipe_checks_its_options_before_resuming(
    tiny_dir, squares_dir, tmp_path, recipe, first, changed, flag
):
    import importlib

    module = importlib.import_module(f"sdlab.training.{recipe}")
    config_cls = next(getattr(module, n) for n in dir(module) if n.endswith("Config") and n != "RecipeConfig")
    train = getattr(module, recipe)
    base = common(tiny_dir, squares_dir, tmp_path, steps=1, checkpoint_every=1)
    train(config_cls(**base, **first))
    with pytest.raises(InputError, match=f"^{flag} is .*, but the checkpoint .* was trained with {flag} "):
        train(config_cls(**base, **changed, resume="latest"))


def test_train_base_checks_its_options_before_any_stage_runs(tmp_path):
    import json

    from sdlab.training.base import PRESETS, BaseTrainConfig, train_base
    from sdlab.training.checkpoints import run_options

    first = BaseTrainConfig(**{**PRESETS["tiny"], "run_dir": str(tmp_path / "run")})
    checkpoint = tmp_path / "run" / "stages" / "unet" / "checkpoints" / "step-000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "step.json").write_text(json.dumps({"step": 3, "options": run_options(first)}))
    changed = BaseTrainConfig(**{**PRESETS["tiny"], "run_dir": str(tmp_path / "run"), "seed": first.seed + 1})
    with pytest.raises(
        InputError, match="^--seed is .*, but the checkpoint .*step-000003 was trained with --seed"
    ):
        train_base(changed, resume=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["stages"]  # no stage ran
