"""The one training loop: every recipe and every train-base stage resumes bit for bit, gradient accumulation
takes the same step, the optimizer is an option, and a NaN on one process stops them all."""

from __future__ import annotations

import csv
import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_teach import common

from sdlab.errors import InputError
from sdlab.training.checkpoints import CheckpointManager


def rows(run: Path) -> list[dict]:
    with (run / "loss.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(f)]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a result: a .safetensors file, or all of a model folder's."""
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    out = {}
    for file in files:
        out.update({f"{file.relative_to(path.parent)}:{k}": v for k, v in load_file(str(file)).items()})
    return out


def assert_identical(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 0
    for key, value in ta.items():
        assert torch.equal(value, tb[key]), key


def kill_at(monkeypatch, step: int, stage: str = "") -> None:
    """Make the next save of checkpoint `step` (of `stage`, for train-base) die before it writes anything."""
    real = CheckpointManager.save

    def save(self, at):
        if at == step and stage in str(self.root):
            monkeypatch.setattr(CheckpointManager, "save", real)
            raise KeyboardInterrupt
        return real(self, at)

    monkeypatch.setattr(CheckpointManager, "save", save)


RECIPES = {
    "finetune": ("FinetuneConfig", {"ema_decay": 0.9, "train_text_encoder": True, "caption_dropout": 0.3}),
    "finetune-adafactor": (
        "FinetuneConfig",
        {"ema_decay": 0, "optimizer": "adafactor", "learning_rate": 1e-2},
    ),
    "lora": ("LoraTrainConfig", {"train_text_encoder": True, "lr_scheduler": "cosine", "warmup_steps": 2}),
    "lora-prodigy": ("LoraTrainConfig", {"optimizer": "prodigy", "learning_rate": 1.0}),
    "textual_inversion": ("TextualInversionConfig", {"token": "<sq>", "prompts": "object", "num_vectors": 2}),
    "dreambooth": (
        "DreamBoothConfig",
        {
            "instance_prompt": "a sks square",
            "class_prompt": "a square",
            "prior_preservation": True,
            "num_class_images": 2,
            "lora": True,
        },
    ),  # fmt: skip
    "tiny_decoder": ("DecoderDistillConfig", {"width": 8}, "distill_decoder"),
    "lcm": ("LCMDistillConfig", {"time_cond_proj_dim": 32, "validation_prompts": ["a square"]}, "distill"),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_resumes_bit_for_bit(tiny_dir, squares_dir, tmp_path, monkeypatch, name):
    recipe = name.split("-")[0]
    module = importlib.import_module(f"sdlab.training.{recipe}")
    config_cls, extra = getattr(module, RECIPES[name][0]), RECIPES[name][1]
    train = getattr(module, RECIPES[name][2] if len(RECIPES[name]) > 2 else recipe)

    def config(folder: str, **more):
        return config_cls(
            **common(tiny_dir, squares_dir, tmp_path / folder, steps=5, checkpoint_every=2), **extra, **more
        )

    straight = train(config("straight"))
    kill_at(monkeypatch, 4)  # rows 1-4 logged, checkpoint 2 complete, 4 never written
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"))
    resumed = train(config("resumed", resume="latest"))
    assert [r["step"] for r in rows(tmp_path / "resumed" / "run")] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]  # no duplicates
    assert rows(tmp_path / "resumed" / "run") == rows(
        tmp_path / "straight" / "run"
    )  # losses and LRs, exactly
    assert_identical(straight, resumed)
    assert len({r["loss"] for r in rows(tmp_path / "straight" / "run")}) == 5  # it did train


def test_train_base_resumes_bit_for_bit_within_and_across_stages(tmp_path, monkeypatch):
    from sdlab.training.base import PRESETS, BaseTrainConfig, train_base

    def config(folder: str) -> BaseTrainConfig:
        return BaseTrainConfig(**{
            **PRESETS["tiny"], "run_dir": str(tmp_path / folder), "vae_steps": 4, "text_pretrain_steps": 4,
            "unet_steps": 4, "checkpoint_every": 2, "validate_every": 4, "half": False,
        })  # fmt: skip

    straight = train_base(config("straight"), limit_train=64)
    # killed: in the VAE stage after step 3; between stages (the VAE done, the text stage not yet checkpointed);
    # in the text stage after step 3 (its one-cycle schedule and projection head resumed); in the UNet stage
    # after step 3. Each time `--resume` continues where the last checkpoint left off.
    for stage, step in (("vae", 4), ("text", 2), ("text", 4), ("unet", 4)):
        kill_at(monkeypatch, step, f"stages/{stage}")
        with pytest.raises(KeyboardInterrupt):
            train_base(config("resumed"), resume=True, limit_train=64)
    resumed = train_base(config("resumed"), resume=True, limit_train=64)
    for stage in ("vae", "text", "unet"):
        assert rows(tmp_path / "resumed" / "stages" / stage) == rows(tmp_path / "straight" / "stages" / stage)
    assert_identical(straight, resumed)


def test_gradient_accumulation_takes_the_same_step_in_micro_batches(
    tiny_dir, squares_dir, tmp_path, monkeypatch
):
    import sdlab.training.loop as loop
    from sdlab.training.finetune import FinetuneConfig, finetune

    # plain SGD: its step is linear in the gradient, so a micro-batch gradient summed without 1/N would show
    monkeypatch.setattr(loop, "make_optimizer", lambda name, params, lr, **kw: torch.optim.SGD(params, lr=lr))
    results = {}
    for accumulation in (1, 2, 4):
        cfg = common(
            tiny_dir, squares_dir, tmp_path / str(accumulation), steps=3, ema_decay=0, learning_rate=0.05
        )
        finetune(FinetuneConfig(**cfg, gradient_accumulation_steps=accumulation, max_grad_norm=0))
        results[accumulation] = tensors(tmp_path / str(accumulation) / "run" / "model" / "unet")
        losses = [float(r["loss"]) for r in rows(tmp_path / str(accumulation) / "run")]
        assert losses == pytest.approx([float(r["loss"]) for r in rows(tmp_path / "1" / "run")], rel=1e-5)
    base = tensors(Path(tiny_dir) / "unet")
    moved = max(float((results[1][k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-3, moved
    for key, value in results[1].items():
        for accumulation in (2, 4):
            assert torch.allclose(results[accumulation][key], value, atol=1e-5), (
                key,
                (results[accumulation][key] - value).abs().max(),
            )
    with pytest.raises(
        InputError,
        match="--batch-size 4 must be divisible by the 1 processes times --gradient-accumulation-steps 3",
    ):
        finetune(
            FinetuneConfig(**common(tiny_dir, squares_dir, tmp_path / "bad"), gradient_accumulation_steps=3)
        )


def test_an_optimizer_whose_package_is_missing_is_one_sentence(tiny_dir, squares_dir, tmp_path, monkeypatch):
    from sdlab.training.lora import LoraTrainConfig, lora

    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import fails
    with pytest.raises(
        InputError,
        match=r"^--optimizer prodigy needs the prodigyopt package: pip install 'sdlab\[optimizers\]'$",
    ):
        lora(LoraTrainConfig(**common(tiny_dir, squares_dir, tmp_path), optimizer="prodigy"))
    with pytest.raises(InputError, match="--optimizer must be one of adamw, adafactor, prodigy, got 'lion'"):
        lora(LoraTrainConfig(**common(tiny_dir, squares_dir, tmp_path), optimizer="lion"))


DRIVER = """
import json, sys
from sdlab.cli.main import main

cfg = json.loads(open(sys.argv[1]).read())
if cfg.pop("poison", False):  # the loss of process 1 only becomes NaN at step 3
    from accelerate import PartialState
    import sdlab.training.recipe as recipe

    real, calls = recipe.diffusion_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if PartialState().process_index == 1 and len(calls) == 3 else loss

    recipe.diffusion_loss = poisoned
argv = ["finetune", cfg.pop("data")]
for key, value in cfg.items():
    argv += [f"--{key.replace('_', '-')}", str(value)]
sys.exit(main(argv))
"""


def launch(tmp_path: Path, cfg: dict, processes: int) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    config = tmp_path / f"cfg-{processes}-{len(list(tmp_path.glob('cfg-*')))}.json"
    config.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(driver), str(config)]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), str(driver), str(config),
        ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_take_the_same_steps_and_schedule_as_one(tiny_dir, squares_dir, tmp_path):
    """One global batch split in two, one schedule step per optimizer step (accelerate's default stepped the
    schedule once per process, so two processes ran a cosine schedule twice as fast)."""
    for processes in (1, 2):
        cfg = common(tiny_dir, squares_dir, tmp_path / str(processes), steps=4, ema_decay=0)
        cfg.update(
            lr_scheduler="cosine", warmup_steps=1, gradient_accumulation_steps=2 if processes == 1 else 1
        )
        done = launch(tmp_path, cfg, processes)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = rows(tmp_path / "1" / "run"), rows(tmp_path / "2" / "run")
    assert [r["lr"] for r in one] == [r["lr"] for r in two]
    assert [float(r["loss"]) for r in one] == pytest.approx([float(r["loss"]) for r in two], abs=1e-5)
    a, b = tensors(tmp_path / "1" / "run" / "model"), tensors(tmp_path / "2" / "run" / "model")
    assert a.keys() == b.keys() and len(a) > 0
    for key, value in a.items():
        assert torch.allclose(value, b[key], atol=1e-5), key


def test_a_nan_on_one_process_stops_every_process_with_one_sentence(tiny_dir, squares_dir, tmp_path):
    cfg = common(tiny_dir, squares_dir, tmp_path, steps=6, checkpoint_every=2, ema_decay=0)
    done = launch(tmp_path, {**cfg, "poison": True}, 2)
    assert done.returncode != 0
    sentence = "sdlab finetune: stopped: the loss became nan at step 3; the last complete checkpoint"
    assert done.stderr.count(sentence) == 2, done.stderr[-3000:]  # both processes stopped, neither hangs
    assert "step-000002, is kept" in done.stderr
    # the loss is read every --log-every steps, and always before a checkpoint: none holds the NaN weights
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002"]
    assert [r["step"] for r in rows(tmp_path / "run")] == ["1", "2"]
    # the only traceback is accelerate's launcher reporting its children's exit status, none from sdlab
    assert "TrainingError" not in done.stderr and "sdlab/training" not in done.stderr


def test_train_base_checks_every_option_first_and_a_finished_stage_does_not_block_a_rerun(tmp_path):
    from sdlab.training.base import PRESETS, BaseTrainConfig, train_base

    run = tmp_path / "run"
    tiny = {**PRESETS["tiny"], "run_dir": str(run), "vae_steps": 2, "text_pretrain_steps": 0, "unet_steps": 2}
    for bad, message in (
        ({"lr_scheduler": "cosinee"}, "--lr-scheduler must be one of linear, cosine"),
        ({"mixed_precision": "fp8"}, "--mixed-precision must be no, fp16 or bf16"),
        ({"unet_lr": -1.0}, "--unet-lr must be a positive number"),
        ({"keep_checkpoints": 0}, "--keep-checkpoints must be a positive integer"),
    ):
        with pytest.raises(InputError, match=message):
            train_base(BaseTrainConfig(**{**tiny, **bad}), limit_train=256)
        assert not run.exists()  # refused before anything ran
    train_base(BaseTrainConfig(**tiny), limit_train=256)
    # the VAE stage is done: a rerun with another UNet learning rate is not refused by the VAE's checkpoints
    (run / "model").rename(tmp_path / "model-1")
    with pytest.raises(InputError, match="checkpoints of the unfinished unet stage; pass --resume"):
        train_base(BaseTrainConfig(**{**tiny, "unet_lr": 5e-4}), limit_train=256)
    with pytest.raises(
        InputError, match="^--unet-lr is 0.0005, but the checkpoint .* was trained with --unet-lr 0.001"
    ):
        train_base(BaseTrainConfig(**{**tiny, "unet_lr": 5e-4}), resume=True, limit_train=256)
    wider = {**tiny, "architecture": PRESETS["quick"]["architecture"]}
    with pytest.raises(InputError, match="the architecture differs .* resume with the same --preset"):
        train_base(BaseTrainConfig(**wider), resume=True, limit_train=256)


def test_a_resume_from_an_older_checkpoint_drops_the_newer_ones_and_another_process_count_is_refused(
    tiny_dir, squares_dir, tmp_path
):
    from sdlab.training.finetune import FinetuneConfig, finetune

    cfg = common(
        tiny_dir, squares_dir, tmp_path, steps=6, checkpoint_every=2, ema_decay=0, keep_checkpoints=3
    )
    finetune(FinetuneConfig(**cfg))
    checkpoints = tmp_path / "run" / "checkpoints"
    finetune(FinetuneConfig(**{**cfg, "steps": 4}, resume=str(checkpoints / "step-000002")))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002", "step-000004"]
    assert [r["step"] for r in rows(tmp_path / "run")] == ["1", "2", "3", "4"]
    record = json.loads((checkpoints / "step-000004" / "step.json").read_text())
    (checkpoints / "step-000004" / "step.json").write_text(json.dumps({**record, "processes": 2}))
    with pytest.raises(
        InputError,
        match="saved by 2 process.* this run has 1; resume with accelerate launch --num_processes 2",
    ):
        finetune(FinetuneConfig(**cfg, resume="latest"))


def test_the_contrastive_stage_runs_with_adafactor_which_has_no_momentum_to_cycle(tmp_path):
    from conftest import tiny_text_encoder

    from sdlab.loading.tokenizer import clip_tokenizer
    from sdlab.training.contrastive import contrastive_pretrain
    from sdlab.training.loop import TrainConfig, TrainLoop

    captions = [lambda rng, d=d: f"a handwritten digit {d}" for d in range(8)] * 4
    features = torch.nn.functional.one_hot(torch.arange(32) % 8, 8).float()
    loop = TrainLoop(
        TrainConfig(output=str(tmp_path), steps=3, batch_size=8, optimizer="adafactor", learning_rate=1e-2)
    )
    contrastive_pretrain(loop, tiny_text_encoder(), clip_tokenizer(), captions, features)
    assert [r["step"] for r in rows(tmp_path)] == ["1", "2", "3"]


CLASS_DRIVER = """
import sys
from sdlab.loading import load_pipeline
from sdlab.training.dreambooth import class_images

pipe = load_pipeline(sys.argv[1], device="cpu")
items = class_images(pipe, "a square", __import__("pathlib").Path(sys.argv[2]), 5, seed=3, batch=2)
print(len(items))
"""


def test_dreambooth_class_images_split_across_processes_equal_one_process(tiny_dir, tmp_path):
    """Issue 13 item 5: class images through the same split path as --from-file (batches across processes)."""
    import numpy as np
    from PIL import Image

    driver = tmp_path / "class_driver.py"
    driver.write_text(CLASS_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for processes in (1, 2):
        command = [sys.executable, str(driver), str(tiny_dir), str(tmp_path / str(processes))]
        if processes == 2:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(port), *command[1:]]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = tmp_path / "1", tmp_path / "2"
    names = sorted(p.name for p in one.glob("class-*.png"))
    assert (
        names
        == [f"class-{s:06d}.png" for s in range(3, 8)]
        == sorted(p.name for p in two.glob("class-*.png"))
    )
    for name in names:
        with Image.open(one / name) as a, Image.open(two / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
    assert (one / "metadata.jsonl").read_text() == (two / "metadata.jsonl").read_text()
