"""Distillation recipes: a tiny decoder from the model's VAE (`sdlab distill-decoder`) and a latent
consistency model from its UNet (`sdlab distill`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler
from PIL import Image
from test_teach import common

from sdlab.cli.main import main
from sdlab.errors import InputError
from sdlab.loading import load_pipeline
from sdlab.loading.decoder import check_decoder_fits, load_vae_decoder
from sdlab.training.lcm import (
    DDIMSolver,
    LCMDistillConfig,
    boundary_scalings,
    distill,
    student_unet,
    x0_and_eps,
)
from sdlab.training.tiny_decoder import DecoderDistillConfig, distill_decoder, tiny_autoencoder

PROMPT = "a bright square"


@pytest.fixture(scope="module")
def tiny_decoder_run(tiny_dir, squares_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill-decoder")
    cfg = DecoderDistillConfig(
        **common(tiny_dir, squares_dir, out, steps=40, batch_size=8, checkpoint_every=40, learning_rate=3e-3),
        width=8,
    )
    return distill_decoder(cfg), out / "run"


def test_the_tiny_decoder_learns_the_vae_and_reads_the_models_latents(tiny, tiny_decoder_run, squares_dir):
    from sdlab.datasets import load_pixels, read_folder

    folder, run = tiny_decoder_run
    decoder = load_vae_decoder(folder)
    check_decoder_fits(decoder, tiny.vae.config.latent_channels, tiny.vae_scale_factor, str(folder))
    # against the untrained student, on latents of the training images: distillation brought it to the VAE
    untrained = tiny_autoencoder(tiny.vae, width=8, depth=1)
    pixels = load_pixels(read_folder(squares_dir, require_captions=False), 32)
    with torch.no_grad():
        latents = tiny.vae.encode(pixels).latent_dist.mean * tiny.vae.config.scaling_factor
        teacher = tiny.vae.decode(latents / tiny.vae.config.scaling_factor).sample.clamp(-1, 1)
        before = torch.nn.functional.mse_loss(untrained.decode(latents).sample, teacher)
        after = torch.nn.functional.mse_loss(decoder.decode(latents).sample, teacher)
    assert after < before / 3
    assert (run / "validation" / "step-000040.png").is_file()


def test_vae_decoder_tiny_uses_the_model_folders_own_and_is_recorded_by_name(
    tiny_dir, tiny_decoder_run, tmp_path, capsys
):
    folder, _ = tiny_decoder_run
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    base = ["generate", PROMPT, "--model", str(model), "--steps", "2", "--seed", "3"]
    # a model without one: one sentence, exit 2, no image
    assert main([*base, "--vae-decoder", "tiny", "-o", str(tmp_path / "none.png")]) == 2
    err = capsys.readouterr().err
    assert "has no tiny decoder" in err and "sdlab distill-decoder" in err and "Traceback" not in err
    assert not (tmp_path / "none.png").exists()

    shutil.copytree(folder, model / "vae_tiny")
    assert main([*base, "--vae-decoder", "tiny", "-o", str(tmp_path / "tiny.png")]) == 0
    assert main([*base, "--vae-decoder", str(folder), "-o", str(tmp_path / "path.png")]) == 0
    assert main([*base, "-o", str(tmp_path / "full.png")]) == 0
    tiny_png, path_png, full_png = (Image.open(tmp_path / n) for n in ("tiny.png", "path.png", "full.png"))
    assert np.array_equal(np.asarray(tiny_png), np.asarray(path_png))  # the same decoder
    assert not np.array_equal(np.asarray(tiny_png), np.asarray(full_png))
    assert json.loads(tiny_png.text["sdlab"])["vae_decoder"] == "tiny"  # portable with the model
    assert "VAE Decoder: tiny" in tiny_png.text["parameters"]


def test_distillation_without_data_needs_the_digits_model(tiny_dir, tmp_path):
    cfg = DecoderDistillConfig(model=str(tiny_dir), output=str(tmp_path / "run"), steps=1)
    with pytest.raises(InputError, match="give a folder of images"):
        distill_decoder(cfg)


def test_boundary_scalings_match_lcm_scheduler():
    scheduler = LCMScheduler()
    t = torch.tensor([0, 1, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        skip, out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(float(skip), rel=1e-6)
        assert c_out[i].item() == pytest.approx(float(out), rel=1e-6, abs=1e-12)
    assert c_skip[0].item() == 1 and c_out[0].item() == 0  # f(x, 0) = x: the boundary condition


def test_the_ddim_solver_steps_exact_predictions_onto_the_forward_process():
    scheduler = LCMScheduler()
    solver = DDIMSolver(scheduler.alphas_cumprod, 50)
    assert solver.k == 20 and solver.timesteps[0] == 19 and solver.timesteps[-1] == 999
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([1, 10, 49])
    end = solver.timesteps[index] - solver.k  # t_n
    expected = scheduler.add_noise(x0, eps, end)  # DDIM (eta 0) with the true x0 and eps lands on q(x_t_n)
    assert torch.allclose(solver.step(x0, eps, index), expected, atol=1e-6)
    # and the epsilon/v conversions invert the forward process
    a = scheduler.alphas_cumprod[end].view(-1, 1, 1, 1)
    for kind, output in (("epsilon", eps), ("v_prediction", a.sqrt() * eps - (1 - a).sqrt() * x0)):
        got_x0, got_eps = x0_and_eps(output, expected, a, kind)
        assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, eps, atol=1e-4)


def test_the_student_starts_as_the_teacher_for_every_guidance_weight(tiny):
    student = student_unet(tiny.unet, 32)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        teacher = tiny.unet(x, t, encoder_hidden_states=text).sample
        for w in (0.0, 3.0):
            cond = torch.full((2, 32), w)
            assert torch.equal(student(x, t, encoder_hidden_states=text, timestep_cond=cond).sample, teacher)
    with pytest.raises(InputError, match="already guidance-distilled"):
        student_unet(student, 32)


def test_distill_writes_a_one_pass_per_step_lcm_model(tiny_dir, squares_dir, tmp_path):
    cfg = LCMDistillConfig(
        **common(tiny_dir, squares_dir, tmp_path, steps=3, batch_size=4, checkpoint_every=3),
        time_cond_proj_dim=32,
        validation_prompts=[PROMPT],
    )
    folder = distill(cfg)
    pipe = load_pipeline(folder)
    assert pipe.unet.config.time_cond_proj_dim == 32
    assert pipe.recommended.to_json() == {"scheduler": "lcm", "num_inference_steps": 4, "guidance_scale": 3.5}
    result = pipe.generate(PROMPT, seed=0)  # the recommended sampling: 4 LCM steps, CFG baked in
    assert result.settings["scheduler"] == "lcm" and result.settings["unet_evaluations"] == 4
    assert (tmp_path / "run" / "validation" / "step-000003.png").is_file()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--w-min", "5", "--w-max", "2"], "--w-min and --w-max"),
        (["--w-max", "inf"], "--w-min and --w-max"),
        (["--num-ddim-timesteps", "2"], "--num-ddim-timesteps must be an integer of at least 4"),
        (["--time-cond-proj-dim", "2"], "--time-cond-proj-dim must be an integer of at least 4"),
        (
            ["--validation-steps", "8", "--num-ddim-timesteps", "5"],
            "--validation-steps 8 exceeds the 5 timesteps",
        ),
        (["--ema-decay", "1"], "--ema-decay must be in"),
        (["--huber-c", "0"], "--huber-c must be a positive number"),
        (["--guidance-interval", "2,1"], "guidance_interval needs 0 <= LO < HI"),
    ],
)
def test_bad_distill_options_are_one_sentence_before_anything_is_written(tmp_path, capsys, bad, message):
    run = tmp_path / "run"
    assert main(["distill", "-o", str(run), *bad]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_an_inpainting_teacher_is_refused_in_one_sentence(tiny_inpaint, squares_dir, tmp_path):
    from sdlab.loading.folder import save_folder

    teacher = save_folder(tiny_inpaint, tmp_path / "inpaint")
    cfg = LCMDistillConfig(**common(teacher, squares_dir, tmp_path, steps=1), time_cond_proj_dim=32)
    with pytest.raises(InputError, match="inpainting model"):
        distill(cfg)


def test_the_teacher_guides_only_inside_the_guidance_interval(tiny_dir, squares_dir, tmp_path):
    """At step 1 the student ignores w (its embedding's projection starts at zero), so the loss depends on
    w only through the teacher's guidance: none outside the interval, as with w = 0."""

    def first_loss(name: str, **options) -> str:
        cfg = LCMDistillConfig(
            **common(tiny_dir, squares_dir, tmp_path / name, steps=1, batch_size=4, checkpoint_every=1),
            time_cond_proj_dim=32, validation_prompts=[PROMPT], **options,
        )  # fmt: skip
        distill(cfg)
        with (tmp_path / name / "run" / "loss.csv").open() as f:
            return f.read().splitlines()[1].split(",")[1]

    outside = first_loss("outside", guidance_interval="0,0.0001")  # no training timestep has sigma <= 1e-4
    unguided = first_loss("unguided", w_min=0.0, w_max=0.0)
    everywhere = first_loss("everywhere", guidance_interval="all")
    assert outside == unguided != everywhere
