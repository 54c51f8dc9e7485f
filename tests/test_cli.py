"""The `sdlab` command end to end on the tiny model: outputs, recipes, replay, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from sdlab.cli.main import main
from sdlab.images import read_png_text
from sdlab.metadata import parse_parameters
from sdlab.outputs import read_recipe

FAST = ["--steps", "3", "--height", "32", "--width", "32"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_png_with_a1111_parameters_and_replay_reproduces_it(capsys, tmp_path, tiny_dir):
    out = tmp_path / "cat.png"
    code, stdout, _ = run(
        capsys, "generate", "a (red:1.2) cat", "--negative-prompt", "blurry", "--model", tiny_dir,
        "--scheduler", "dpmpp_2m_karras", "--seed", 1234, "--guidance-scale", 6.5, "-o", out, *FAST,
    )  # fmt: skip
    assert code == 0 and str(out) in stdout
    prompt, negative, settings = parse_parameters(read_png_text(out)["parameters"])
    assert (prompt, negative) == ("a (red:1.2) cat", "blurry")
    assert (
        settings["Sampler"] == "DPM++ 2M"
        and settings["Schedule type"] == "Karras"
        and settings["Seed"] == "1234"
    )
    assert settings["Steps"] == "3" and settings["CFG scale"] == "6.5" and settings["Size"] == "32x32"
    assert settings["Model"] == "tiny" and len(settings["Model hash"]) == 10

    code, stdout, _ = run(capsys, "replay", out)
    replayed = tmp_path / "cat-replay.png"
    assert code == 0 and "identical pixels" in stdout
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(replayed)))


def test_several_images_get_numbered_files_a_grid_and_their_own_seeds(capsys, tmp_path, tiny_dir):
    out = tmp_path / "batch.png"
    code, _, _ = run(
        capsys, "generate", "a cat", "--model", tiny_dir, "-n", 3, "--seed", 10, "-o", out, *FAST
    )
    assert code == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["batch-0.png", "batch-1.png", "batch-2.png", "batch-grid.png"]
    seeds = [json.loads(read_png_text(tmp_path / f"batch-{i}.png")["sdlab"])["seed"] for i in range(3)]
    assert seeds == [10, 11, 12]
    # the grid carries its first image's parameters, as A1111's grids do
    assert (
        read_png_text(tmp_path / "batch-grid.png")["parameters"]
        == read_png_text(tmp_path / "batch-0.png")["parameters"]
    )
    # the third image replays alone, from its own recipe
    code, stdout, _ = run(capsys, "replay", tmp_path / "batch-2.png")
    assert code == 0 and "identical pixels" in stdout


def test_img2img_chain_records_strength_and_replays(capsys, tmp_path, tiny_dir):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    assert run(capsys, "generate", "a cat", "--model", tiny_dir, "--seed", 1, "-o", first, *FAST)[0] == 0
    code, _, _ = run(
        capsys, "generate", "a cat, in the style of van gogh", "--model", tiny_dir, "--init-image", first,
        "--strength", 0.6, "--steps", 5, "--seed", 2, "-o", second,
    )  # fmt: skip
    assert code == 0
    _, _, settings = parse_parameters(read_png_text(second)["parameters"])
    assert settings["Denoising strength"] == "0.6"
    code, stdout, _ = run(capsys, "replay", second)
    assert code == 0 and "identical pixels" in stdout


def test_default_output_never_overwrites(capsys, tmp_path, tiny_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert run(capsys, "generate", "a cat", "--model", tiny_dir, "--seed", 1, *FAST)[0] == 0
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["00001.png", "00002.png"]


def test_info_describes_the_model(capsys, tiny_dir):
    code, stdout, _ = run(capsys, "info", tiny_dir, "--json")
    info = json.loads(stdout)
    assert code == 0
    assert info["resolution"] == 32 and info["vae_scale_factor"] == 2 and info["scheduler"] == "pndm"
    assert info["unet"]["block_out_channels"] == [32, 64] and info["text_encoder"]["vocab_size"] == 49408
    # the shipped model by its name, or by default, with the sampling sdlab uses for it
    for argv in (("info", "digits", "--json"), ("info", "--json")):
        code, stdout, _ = run(capsys, *argv)
        digits = json.loads(stdout)
        assert (
            code == 0
            and digits["recommended_sampling"]["scheduler"] == "unipc"
            and digits["resolution"] == 32
        )
        assert digits["tiny_decoder"] == "vae_tiny" and info["tiny_decoder"] is None  # shipped, and not
    assert info["family"] == digits["family"] == "sd1" and "text_encoder_2" not in info


def test_info_describes_an_sdxl_model(capsys, tiny_sdxl_dir):
    code, stdout, _ = run(capsys, "info", tiny_sdxl_dir)
    assert code == 0
    assert "family          SDXL (CLIP and OpenCLIP bigG text encoders; size conditioning)" in stdout
    code, stdout, _ = run(capsys, "info", tiny_sdxl_dir, "--json")
    info = json.loads(stdout)
    assert info["family"] == "sdxl" and info["unet"]["cross_attention_dim"] == 80
    assert info["text_encoder"]["hidden_size"] == 32 and info["text_encoder_2"]["hidden_size"] == 48
    assert info["text_encoder_2"]["projection_dim"] == 32


def test_generate_with_sdxl_from_the_cli(capsys, tmp_path, tiny_sdxl_dir):
    """SDXL's settings as flags, recorded in the PNG, and the image replays exactly."""
    out = tmp_path / "xl.png"
    args = ("generate", "a red cube", "--model", tiny_sdxl_dir, "--steps", 2, "--seed", 3, "-o", out)
    code, _, stderr = run(
        capsys, *args, "--original-size", "64,48", "--clip-skip", 1, "--crops-coords-top-left", "2,0"
    )
    assert code == 0, stderr
    recipe = read_recipe(out)
    assert (
        recipe["original_size"] == [64, 48] and recipe["target_size"] == [32, 32] and recipe["clip_skip"] == 1
    )
    assert "Clip skip: 2" in read_png_text(out)["parameters"]  # A1111 counts the layer read
    code, _, stderr = run(capsys, "replay", out, "-o", tmp_path / "again.png")
    assert code == 0, stderr
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(tmp_path / "again.png")))
    code, _, stderr = run(capsys, *args, "--original-size", "64")
    assert code == 2 and "--original-size must be two integers H,W (pixels), got '64'" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "33"], "height must be a positive multiple of 2"),
        (["--steps", "0"], "num_inference_steps (--steps) must be an integer from 1 to"),
        (["--seed", "4294967301"], "seed must be an integer from 0 to 4294967295"),  # 5 + 2**32: not seed 5
        (["--guidance-scale", "nan"], "guidance_scale"),
        (["--strength", "0.5"], "strength applies only to image-to-image"),
        (["--init-image", "{missing}"], "missing.png"),
        (["--init-image", "{empty}"], "empty.png"),
        (["--init-image", "{image}", "--strength", "2"], "strength must be in (0, 1]"),
        (["--init-image", "{image}", "--strength", "0.01"], "runs no denoising step"),
        (["--mask", "{image}"], "a mask needs an init image"),
        (["--scheduler", "nope"], "invalid choice"),
        (["--steps", "many"], "invalid int value"),
        (["--model", "{missing}"], "does not exist"),
        (["-o", "{tmp}/x.gif"], "must end in .png"),
        (["--guide-digit", "12"], "--guide-digit must be a digit from 0 to 9"),
        (["--guide-digit", "3", "--guide-scale", "-1"], "--guide-scale must be a number >= 0"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(capsys, tmp_path, tiny_dir, args, message):
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    (tmp_path / "empty.png").write_bytes(b"")
    paths = {
        "missing": tmp_path / "missing.png",
        "empty": tmp_path / "empty.png",
        "image": tmp_path / "image.png",
        "tmp": tmp_path,
    }
    args = [a.format(**paths) for a in args]
    argv = [
        "generate",
        "a cat",
        "--model",
        str(tiny_dir),
        "--steps",
        "3",
        "--height",
        "32",
        "--width",
        "32",
        *args,
    ]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "weights.ckpt"
    bad.write_bytes(b"not really a checkpoint")
    proc = subprocess.run(
        [sys.executable, "-m", "sdlab.cli.main", "generate", "a cat", "--model", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--allow-pickle" in proc.stderr and "Traceback" not in proc.stderr


def test_convert_to_single_file_and_back_gives_the_same_images(capsys, tmp_path, tiny_dir):
    single = tmp_path / "tiny.safetensors"
    assert run(capsys, "convert", tiny_dir, single, "--config", tiny_dir)[0] == 0
    folder = tmp_path / "tiny-again"
    assert run(capsys, "convert", single, folder, "--config", tiny_dir)[0] == 0
    outs = []
    for model in (tiny_dir, single, folder):
        out = tmp_path / f"{len(outs)}.png"
        args = ["generate", "a cat", "--model", model, "--seed", 3, "-o", out, *FAST]
        assert run(capsys, *args, *(["--config", tiny_dir] if model == single else []))[0] == 0
        outs.append(np.asarray(PIL.Image.open(out)))
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_guided_generation_records_the_guide_and_replays_it(capsys, tmp_path, tiny_dir):
    out = tmp_path / "guided.png"
    code, _, _ = run(
        capsys,
        "generate",
        "",
        "--model",
        tiny_dir,
        "--guide-digit",
        4,
        "--guide-scale",
        5,
        "--seed",
        2,
        "-o",
        out,
        *FAST,
    )
    assert code == 0
    recipe = json.loads(read_png_text(out)["sdlab"])
    assert recipe["guide_digit"] == 4 and recipe["guide_scale"] == 5.0
    code, stdout, _ = run(capsys, "replay", out)
    assert code == 0 and "identical pixels" in stdout
    plain = tmp_path / "plain.png"
    run(capsys, "generate", "", "--model", tiny_dir, "--seed", 2, "-o", plain, *FAST)
    assert np.abs(np.asarray(PIL.Image.open(plain), float) - np.asarray(PIL.Image.open(out), float)).max() > 0


def test_eval_refuses_unknown_sweeps(capsys, tiny_dir):
    code, _, err = run(capsys, "eval", "--model", tiny_dir, "--sweep", "guidance,colour")
    assert code == 2 and "unknown sweep 'colour'" in err
    code, _, err = run(capsys, "eval", "--model", tiny_dir, "--sweep", "guidance", "--vae-decoder", "tiny")
    assert code == 2 and "run the sweeps without it" in err
    # more images per digit than FID's floor has real digits of each: one sentence before any generating
    code, _, err = run(capsys, "eval", "--model", tiny_dir, "--per-digit", "500")
    assert code == 2 and "--per-digit can be at most 400" in err and "Traceback" not in err


def test_the_recipe_records_the_dtype_and_replay_under_auto_repeats_it(capsys, tmp_path, tiny_dir):
    """`--dtype auto` means bfloat16 on some CPUs and float32 on others: replay uses what the image used."""
    out = tmp_path / "bf16.png"
    code, _, _ = run(capsys, "generate", "a cat", "--model", tiny_dir, "--seed", 5, "--dtype", "bfloat16",
                     "-o", out, *FAST)  # fmt: skip
    assert code == 0 and json.loads(read_png_text(out)["sdlab"])["dtype"] == "bfloat16"
    code, stdout, _ = run(capsys, "replay", out)  # auto: float32 in the tests (SDLAB_DTYPE)
    assert code == 0 and "identical pixels" in stdout
    code, stdout, _ = run(capsys, "replay", out, "--dtype", "float32", "-o", tmp_path / "fp32.png")
    assert code == 0 and "max pixel difference" in stdout  # the other precision: other pixels


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["generate", "--steps", "x"], ["serve", "--port", "x"]]
)
def test_help_version_and_argument_errors_import_no_torch(argv):
    """Issue 13: `sdlab --help` took 4.6 s, most of it importing torch, diffusers and transformers."""
    code = (
        "import sys\nfrom sdlab.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "[]"
