"""The digits model's parts: data, style measures, captioner, metrics, and the training recipe."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from sdlab.digits.attributes import measure
from sdlab.digits.captioner import WORDS, DigitFacts, facts_from
from sdlab.digits.data import load_mnist, to_gray, to_pixels, train_test_split
from sdlab.evaluation.metrics import diversity, frechet_distance, prompt_accuracy


def test_fixed_split_is_balanced_disjoint_and_deterministic():
    train, test = train_test_split()
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test.labels).tolist() == [100] * 10
    again_train, again_test = train_test_split()
    assert np.array_equal(test.images, again_test.images) and np.array_equal(train.labels, again_train.labels)
    all_images = {img.tobytes() for img in load_mnist().images}
    assert len({img.tobytes() for img in train.images} | {img.tobytes() for img in test.images}) <= len(
        all_images
    )
    assert not {img.tobytes() for img in train.images[:500]} & {img.tobytes() for img in test.images}


def test_pixels_round_trip_to_gray():
    _, test = train_test_split()
    pixels = to_pixels(test.images[:4])
    assert pixels.shape == (4, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.allclose(
        to_gray((pixels + 1) / 2), torch.from_numpy(test.images[:4] / 255).float(), atol=1e-6
    )


def stroke(width: int, slant: float = 0.0, height: int = 20) -> np.ndarray:
    """A vertical bar of `width` pixels, sheared by `slant` (pixels right per pixel up)."""
    img = np.zeros((28, 28))
    top = 14 - height // 2
    for r in range(top, top + height):
        c = int(round(13 + slant * (14 - r)))
        img[r, c - width // 2 : c - width // 2 + width] = 1.0
    return img


def test_style_measures_read_thickness_slant_and_size():
    s = measure(
        np.stack([stroke(2), stroke(5), stroke(3, slant=0.4), stroke(3, slant=-0.4), stroke(3, height=10)])
    )
    assert 1.5 < s.thickness[0] < 2.5 and 4.0 < s.thickness[1] < 5.5
    assert s.slant[2] > 0.3 and s.slant[3] < -0.3 and abs(s.slant[0]) < 0.05
    assert s.size[0] == 20 and s.size[4] == 10


def test_captions_name_the_digit_and_its_style():
    facts = facts_from(np.array([7, 3]), np.stack([stroke(6, slant=0.6), stroke(2, slant=-0.4)]))
    assert facts[0] == DigitFacts(7, "thick", "right", False)
    assert facts[0].caption() == "a thick handwritten digit 7, slanted to the right"
    assert facts[1].caption() == "a thin handwritten digit 3, slanted to the left"
    import random

    rng = random.Random(0)
    phrasings = {facts[0].caption(rng, keep=0.5) for _ in range(200)}
    assert any("seven" in p for p in phrasings) and any(" 7" in p or p.startswith("7") for p in phrasings)
    assert any("thick" not in p for p in phrasings) and all("3" not in p for p in phrasings)
    assert WORDS[7] == "seven"


def test_frechet_distance_and_friends_on_known_inputs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = a + np.array([3.0, 0, 0, 0])
    assert frechet_distance(a, shifted) == pytest.approx(9.0, rel=1e-3)
    assert frechet_distance(a, 2 * a) == pytest.approx(4 * 1.0, rel=0.1)  # trace terms: 4 * (1 + 4 - 2*2)
    assert prompt_accuracy(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(2 / 3)
    assert diversity(np.zeros((4, 3)), np.array([0, 0, 1, 1])) == 0
    assert diversity(a[:100], np.zeros(100)) > 1


def test_train_base_tiny_runs_every_stage_and_loads_in_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    from sdlab.loading import load_pipeline
    from sdlab.training.base import PRESETS, BaseTrainConfig, train_base

    cfg = BaseTrainConfig(
        run_dir=str(tmp_path / "run"),
        **{
            **PRESETS["tiny"],
            "vae_steps": 30,
            "unet_steps": 40,
            "batch_size": 16,
            "validate_every": 40,
            "checkpoint_every": 20,
        },
    )
    model = train_base(cfg, limit_train=256)
    # every stage left its artifact; the run is resumable
    for name in (
        "captioner.safetensors",
        "vae/config.json",
        "text_encoder/config.json",
        "stages/unet/checkpoints/step-000040/step.json",
        "validation/step-000040.png",
    ):
        assert (tmp_path / "run" / name).exists(), name
    # losses fall
    for stage in ("vae", "text", "unet"):
        log = f"stages/{stage}/loss.csv"
        rows = csv.DictReader((tmp_path / "run" / log).read_text().splitlines())
        losses = [float(r["loss"]) for r in rows]
        assert np.mean(losses[-10:]) < np.mean(losses[:10]), log
    # an ordinary diffusers folder: diffusers' own pipeline loads and runs it
    ref = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    image = ref("a handwritten digit 3", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    pipe = load_pipeline(model)
    assert pipe.vae.config.scaling_factor != 0.18215 and pipe.vae_scale_factor == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["unet_steps"] == 40
    # each stage's wall time, with the machine and date, for the docs' training-time table
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert [s["stage"] for s in timings["stages"]] == ["captioner", "vae", "text", "unet"]
    assert all(s["seconds"] > 0 for s in timings["stages"]) and timings["provenance"]["cores"] >= 1
    # a second run in the same folder must not silently start over
    from sdlab.errors import InputError

    (tmp_path / "run" / "model").rename(tmp_path / "run" / "model-1")
    with pytest.raises(InputError, match="--resume"):
        train_base(cfg, limit_train=256)


def test_train_base_on_a_captioned_folder_instead_of_the_digits(tmp_path):
    from PIL import Image

    from sdlab.loading import load_pipeline
    from sdlab.training.base import PRESETS, BaseTrainConfig, train_base

    data = tmp_path / "data"
    data.mkdir()
    for i in range(8):
        colour = (255, 40, 40) if i % 2 else (40, 40, 255)
        Image.new("RGB", (48, 48), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("a red square" if i % 2 else "a blue square")
    cfg = BaseTrainConfig(
        run_dir=str(tmp_path / "run"),
        data=str(data),
        **{**PRESETS["tiny"], "vae_steps": 4, "unet_steps": 3, "validate_every": 3},
    )
    model = train_base(cfg)
    run = tmp_path / "run"
    assert not (run / "captioner.safetensors").exists() and not (model / "captioner.safetensors").exists()
    with Image.open(run / "validation" / "step-000003.png") as grid:
        assert grid.size[0] == 2 * 32  # one column per distinct caption of the folder
    assert load_pipeline(model).default_size == 32


def test_contrastive_pretraining_teaches_the_text_encoder_which_digit_a_caption_names(tmp_path):
    import random

    from conftest import tiny_text_encoder

    from sdlab.loading.tokenizer import clip_tokenizer
    from sdlab.training.contrastive import contrastive_pretrain
    from sdlab.training.loop import TrainConfig, TrainLoop

    torch.manual_seed(0)
    digits = torch.arange(200) % 10
    features = torch.nn.functional.one_hot(digits, 10).float() + 0.1 * torch.randn(200, 10)
    captions = [lambda rng, d=int(d): f"a handwritten digit {rng.choice([str(d), WORDS[d]])}" for d in digits]
    tokenizer, text_encoder = clip_tokenizer(), tiny_text_encoder()

    def separation() -> float:
        """How much closer a caption's embedding is to captions of the same digit than to other digits'."""
        rng = random.Random(1)
        ids = tokenizer(
            [c(rng) for c in captions[:100]], padding="max_length", max_length=77, return_tensors="pt"
        )
        with torch.no_grad():
            e = torch.nn.functional.normalize(text_encoder(ids.input_ids)[0].mean(1), dim=-1)
        sim, same = e @ e.T, digits[:100, None] == digits[None, :100]
        return float(sim[same].mean() - sim[~same].mean())

    before = separation()
    loop = TrainLoop(
        TrainConfig(output=str(tmp_path), steps=60, batch_size=64, learning_rate=3e-3, max_grad_norm=0)
    )
    contrastive_pretrain(loop, text_encoder, tokenizer, captions, features)
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "loss.csv").read_text().splitlines())]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3
    # "7" and "seven" now land together, away from the other digits
    assert separation() > before + 0.2
