"""`sdlab generate --from-file`: A1111's prompts-from-file syntax, seeds and names fixed by the file, and
the same images from one process or two (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdlab.errors import InputError
from sdlab.service.prompts_file import parse_line, read_prompts_file
from sdlab.service.request import GenerationRequest

LINES = """# digits, one per line
a handwritten digit 1
--prompt "a handwritten digit 2" --batch_size 2 --steps 3
--prompt "a handwritten digit 3" --negative_prompt "thick" --seed 99 --sampler_name "DPM++ 2M" --scheduler karras

--prompt "a handwritten digit 4" --cfg_scale 1 --n_iter 2 --do_not_save_grid true
"""


def test_lines_take_a1111_options_and_seeds_follow_from_the_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(LINES)
    jobs = read_prompts_file(path, GenerationRequest(num_inference_steps=2, guidance_scale=4.0), base_seed=10)
    assert [j.line for j in jobs] == [2, 3, 4, 6] and [j.first for j in jobs] == [0, 1, 3, 4]
    one, two, three, four = (j.request for j in jobs)
    assert (one.prompt, one.seed, one.num_inference_steps, one.guidance_scale) == (
        "a handwritten digit 1",
        10,
        2,
        4.0,
    )
    assert (two.seed, two.num_images_per_prompt, two.num_inference_steps) == (11, 2, 3)
    assert (three.seed, three.negative_prompt, three.scheduler) == (99, "thick", "dpmpp_2m_karras")
    assert (four.seed, four.batch_count, four.guidance_scale) == (14, 2, 1.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--steps ten", r"line 1: --steps takes an integer, got 'ten'"),
        ("--styles x", r"line 1: unknown option --styles; known: --prompt, --negative_prompt"),
        ('--prompt "unclosed', r"line 1: No closing quotation"),
        ("--steps", r"line 1: --steps needs a value"),
        ("--sampler_name Nope", r"line 1: unknown sampler 'Nope'"),
        ("--steps 0", r"line 1: num_inference_steps \(--steps\) must be an integer from 1 to"),
    ],
)
def test_a_bad_line_is_one_sentence_naming_it(tmp_path, line, message):
    path = tmp_path / "p.txt"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        read_prompts_file(path, GenerationRequest(), 0)


def test_an_empty_file_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="holds no prompt"):
        read_prompts_file(tmp_path / "p.txt", GenerationRequest(), 0)
    assert parse_line("a cat", "x") == {"prompt": "a cat"}


def run(command: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(port), "-m"]  # fmt: skip
    else:
        launch = [sys.executable, "-m"]
    return subprocess.run(
        [*launch, "sdlab.cli.main", *command], env=env, capture_output=True, text=True, timeout=300
    )


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_two_processes_write_the_images_one_process_writes(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(LINES)
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        command = ["generate", "--from-file", str(prompts), "--model", str(tiny_dir), "--steps", "2", "--seed", "5",
                   "-o", str(out / "digit.png")]  # fmt: skip
        done = run(command, processes)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[processes] = sorted(p.name for p in out.iterdir())
    assert outputs[1] == outputs[2] == [f"digit-{k}.png" for k in range(6)]
    for name in outputs[1]:
        assert np.array_equal(pixels(tmp_path / "1" / name), pixels(tmp_path / "2" / name)), name
    # image 2 of the file is line 3's second image: seed 5 + 2, as generated on its own
    alone = tmp_path / "alone.png"
    done = run(["generate", "a handwritten digit 2", "--model", str(tiny_dir), "--steps", "3", "--seed", "6", "-n", "2",
                "-o", str(alone)], 1)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(pixels(tmp_path / "1" / "digit-2.png"), pixels(tmp_path / "alone-1.png"))


def test_a_prompt_and_a_prompts_file_together_are_refused(tmp_path, capsys):
    from sdlab.cli.main import main

    (tmp_path / "p.txt").write_text("a cat\n")
    assert (
        main(["generate", "a dog", "--from-file", str(tmp_path / "p.txt"), "-o", str(tmp_path / "x.png")])
        == 2
    )
    assert "give a prompt or --from-file FILE, not both" in capsys.readouterr().err


def test_eval_splits_its_images_across_processes_and_reports_what_one_process_reports(tmp_path):
    """Issue 13 item 5: `sdlab eval` generates through the same split (batches across processes)."""
    import json

    reports = {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        done = run(["eval", "--per-digit", "20", "-o", str(out)], processes)  # 2 batches of 100
        assert done.returncode == 0, done.stderr[-2000:]
        reports[processes] = json.loads((out / "eval.json").read_text())
    # where each ran differs (its command line, the threads each process had, its time); every figure is the same
    assert reports[1].pop("provenance")["command"] != reports[2].pop("provenance")["command"]
    assert (
        reports[1]["headline"].pop("sampling_seconds") > 0
        and reports[2]["headline"].pop("sampling_seconds") > 0
    )
    headline = reports[1]["headline"]
    assert headline["samples"] == 200
    assert reports[1] == reports[2]
    # every judge reports, and the headline is the worse of them (issue 19)
    judges = headline["judges"]
    assert set(judges) == {"cnn", "normalised"} == set(reports[1]["judges"])
    assert headline["prompt_accuracy"] == min(j["prompt_accuracy"] for j in judges.values())
    assert headline["fid_ratio"] == max(j["fid_ratio"] for j in judges.values())
    assert judges[headline["worst_judge"]["fid_ratio"]]["fid_ratio"] == headline["fid_ratio"]
    table = (tmp_path / "1" / "eval.md").read_text()
    assert "| metric | cnn | normalised |" in table and "Worse of the judges" in table
