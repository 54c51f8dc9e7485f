"""sdlab.metadata: A1111's infotext written exactly as A1111 writes it, and parsed back losslessly."""

from __future__ import annotations

import PIL.Image
import pytest

from sdlab.errors import InputError
from sdlab.metadata import format_parameters, parse_parameters

SETTINGS = {
    "Steps": 20,
    "Sampler": "DPM++ 2M Karras",
    "CFG scale": 7.5,
    "Seed": 42,
    "Size": "512x512",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Denoising strength": 0.75,
}
SAMPLE = (
    "a photo of a cat\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75"
)


def as_strings(settings: dict) -> dict[str, str]:
    return {k: str(v) for k, v in settings.items() if v is not None}


def test_format_sample_exactly():
    assert format_parameters("a photo of a cat", "blurry", SETTINGS) == SAMPLE


@pytest.mark.parametrize("negative", [None, "", "   "])
def test_empty_negative_prompt_line_is_left_out(negative):
    text = format_parameters("a cat", negative, {"Steps": 20, "Seed": 1, "Size": "64x64"})
    assert text == "a cat\nSteps: 20, Seed: 1, Size: 64x64"


def test_values_are_quoted_as_a1111_quotes_them():
    settings = {
        "Steps": 20,
        "Lora hashes": "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef",  # A1111's own example
        "Hires prompt": "a\nb",
        "Note": 'say "hi"',
        "Clip skip": None,  # None is left out, as in A1111
        "Version": "v1.9.4",
    }
    assert format_parameters("p", None, settings) == (
        'p\nSteps: 20, Lora hashes: "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef", '
        'Hires prompt: "a\\nb", Note: "say \\"hi\\"", Version: v1.9.4'
    )


def test_parse_sample():
    assert parse_parameters(SAMPLE) == ("a photo of a cat", "blurry", as_strings(SETTINGS))


def test_parse_real_a1111_infotext():
    text = (
        "masterpiece, best quality, 1girl, (detailed eyes:1.2), <lora:add_detail:0.8>,\n"
        "BREAK\n"
        "cherry blossoms\n"
        "Negative prompt: (worst quality, low quality:1.4), easynegative\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
        "Model hash: 7f96a1a9ca, Model: anything-v5, Denoising strength: 0.5, Clip skip: 2, "
        'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", '
        'TI hashes: "easynegative: c74b4e810b03", Version: v1.9.4'
    )
    prompt, negative, settings = parse_parameters(text)
    assert prompt == (
        "masterpiece, best quality, 1girl, (detailed eyes:1.2), <lora:add_detail:0.8>,\nBREAK\ncherry blossoms"
    )
    assert negative == "(worst quality, low quality:1.4), easynegative"
    assert settings["Size"] == "512x768"
    assert settings["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert settings["TI hashes"] == "easynegative: c74b4e810b03"
    assert list(settings)[:3] == ["Steps", "Sampler", "CFG scale"]
    assert settings["Version"] == "v1.9.4"
    assert len(settings) == 14


def test_parse_without_settings_line():
    assert parse_parameters("just a prompt") == ("just a prompt", "", {})
    assert parse_parameters("a cat\nNegative prompt: a dog") == ("a cat", "a dog", {})
    # Fewer than three entries is prompt text, as in A1111: "style: anime" is a common prompt line.
    assert parse_parameters("a cat\nstyle: anime, mood: calm") == ("a cat\nstyle: anime, mood: calm", "", {})
    assert parse_parameters("") == ("", "", {})


def test_parse_windows_line_endings():
    assert parse_parameters(SAMPLE.replace("\n", "\r\n")) == parse_parameters(SAMPLE)


TRICKY_PROMPTS = [
    ("a cat, sitting, on a mat", "blurry, lowres"),
    ("line one\nline two\n\n  indented line four", "neg one\nneg two"),
    ("style: anime, mood: calm", "text: none"),
    ("(masterpiece:1.2), [blurry], {a|b}, <lora:x:0.5>", "((worst quality))"),
    ('a sign saying "hello, world"', "'single' and \"double\" quotes"),
    ("猫 café — naïve 🐱, ü", "ぼやけた"),
    ("Steps: 1, Seed: 2, Size: 3x3\na prompt line that looks like settings", ""),
    ("", "only a negative prompt"),
    ("back\\slash and \\n escape-looking text", ""),
]


@pytest.mark.parametrize(("prompt", "negative"), TRICKY_PROMPTS)
def test_round_trip_prompts(prompt, negative):
    text = format_parameters(prompt, negative, SETTINGS)
    assert parse_parameters(text) == (prompt, negative, as_strings(SETTINGS))


def test_round_trip_tricky_values():
    settings = {
        "Steps": 30,
        "Lora hashes": "a: 1, b: 2",
        "Quoted": '"already quoted"',
        "Newline": "first\nsecond",
        "Padded": "  spaces  ",
        "Empty": "",
        "Backslash": "C:\\models\\v1.safetensors",
        "Unicode": "ñandú, 猫",
        "Hires resize-1/2": "1024x1024",
        "Flag": True,
    }
    assert parse_parameters(format_parameters("p", "n", settings)) == ("p", "n", as_strings(settings))


def test_surrounding_whitespace_of_prompts_is_not_kept():
    # A1111 strips it too; the reader could not tell it from the line structure.
    assert parse_parameters(format_parameters("  a cat \n", " dog ", SETTINGS))[:2] == ("a cat", "dog")


@pytest.mark.parametrize("key", ["Bad:key", "x", " leading", "comma,key", ""])
def test_unwritable_setting_names_are_refused(key):
    with pytest.raises(InputError, match="setting name"):
        format_parameters("p", None, {"Steps": 1, key: 2, "Seed": 3})


# "parameters" lines as AUTOMATIC1111 versions wrote them (and extensions added to them)
A1111_LINES = [
    (  # 2022, before model names and versions; an 8-digit model hash
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 7460a6fa",
        {"scheduler": "euler_a", "seed": 1, "num_inference_steps": 20},
    ),
    (  # 1.0-1.8: the schedule in the sampler's name
        "a cat\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.6.0",
        {"scheduler": "dpmpp_2m_karras", "negative_prompt": "blurry", "width": 512, "height": 768},
    ),
    (  # 1.9+: the schedule type as a field of its own
        "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1",
        {"scheduler": "dpmpp_2m_karras", "seed": 3},
    ),
    (  # 1.9+ with the automatic schedule, img2img
        "a cat\nSteps: 30, Sampler: Euler, Schedule type: Automatic, CFG scale: 5.5, Seed: 9, Size: 64x64, "
        "Denoising strength: 0.45, Version: v1.9.4",
        {"scheduler": "euler", "strength": 0.45, "guidance_scale": 5.5},
    ),
    (  # 1.9+ "Uniform": the model's own timestep spacing
        "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7, Seed: 4, Size: 64x64",
        {"scheduler": "dpmpp_2m", "seed": 4},
    ),
    (  # extensions' fields, values quoted because they hold commas and colons; hires fix
        "a (cat:1.2), <lora:style:0.8>\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 512x512, "
        "Denoising strength: 0.7, Hires upscale: 2, Hires upscaler: Latent, "
        'Lora hashes: "style: 1a2b3c4d5e6f, detail: 0f9e8d7c6b5a", TI hashes: "bad: 1234", '
        'ADetailer model: face_yolov8n.pt, ADetailer prompt: "a face, smiling", Version: v1.10.1',
        {"scheduler": "ddim", "prompt": "a (cat:1.2), <lora:style:0.8>", "seed": 5},
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    A1111_LINES,
    ids=["2022", "1.6", "1.9-karras", "1.9-img2img", "1.9-uniform", "extensions"],
)
def test_recipes_are_read_from_every_a1111_version(tmp_path, text, expected):
    from sdlab.images import save_png
    from sdlab.outputs import parameters_recipe, read_recipe

    path = save_png(PIL.Image.new("RGB", (8, 8)), tmp_path / "a1111.png", parameters=text)
    recipe = read_recipe(path)
    if "Hires upscale" in text:  # the hires fix, read as A1111 writes it (issue 21)
        assert parameters_recipe(text, "the text") == recipe
        assert "strength" not in recipe  # hires fix's denoising strength is not img2img's
        hires = {
            k: recipe[k] for k in ("hr_scale", "hr_upscaler", "hr_denoising_strength", "hr_second_pass_steps")
        }
        assert hires == {
            "hr_scale": 2.0,
            "hr_upscaler": "Latent",
            "hr_denoising_strength": 0.7,
            "hr_second_pass_steps": 0,
        }
    assert {k: recipe[k] for k in expected} == expected


def test_sdlab_writes_the_schedule_type_as_a1111_1_9_does_and_reads_it_back(tmp_path):
    from sdlab.outputs import infotext, read_recipe

    base = {"prompt": "a cat", "negative_prompt": "", "num_inference_steps": 20, "guidance_scale": 7.0, "seed": 1,
            "width": 32, "height": 32, "model_hash": "0123456789", "model": "digits", "sdlab_version": "0"}  # fmt: skip
    for name, sampler, schedule in [("dpmpp_2m_karras", "DPM++ 2M", "Karras"), ("euler_a", "Euler a", None)]:
        text = infotext({**base, "scheduler": name})
        settings = parse_parameters(text)[2]
        assert settings["Sampler"] == sampler and settings.get("Schedule type") == schedule
        assert list(settings)[:3] == ["Steps", "Sampler", "Schedule type" if schedule else "CFG scale"]
        from sdlab.images import save_png

        path = save_png(PIL.Image.new("RGB", (8, 8)), tmp_path / f"{name}.png", parameters=text)
        assert read_recipe(path)["scheduler"] == name


def test_an_unknown_schedule_type_is_one_sentence(tmp_path):
    from sdlab.images import save_png
    from sdlab.outputs import read_recipe

    text = "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Turbo, CFG scale: 7, Seed: 1, Size: 8x8"  # Forge's
    path = save_png(PIL.Image.new("RGB", (8, 8)), tmp_path / "turbo.png", parameters=text)
    with pytest.raises(
        InputError, match="turbo.png: unknown schedule type 'Turbo'; sdlab has: Automatic, Uniform"
    ):
        read_recipe(path)
