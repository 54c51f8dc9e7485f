"""The web UI in a real browser: Debian's chromium, driven by Playwright, against a live `sdlab serve`.

Every test also checks that the page made no request to any host but the server (no CDN, no fonts,
no analytics) and that the browser console shows no errors.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from sdlab.cli.main import main
from sdlab.images import read_png_text
from sdlab.loading import DEFAULT_MODEL
from sdlab.metadata import parse_parameters

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium for the browser tests (.ci/run does)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
# the digits model's recommended steps, where the UI's fields start
DIGITS_STEPS = json.loads((DEFAULT_MODEL / "sdlab.json").read_text())["sampling"]["num_inference_steps"]

from playwright.sync_api import Page, sync_playwright  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the UI that records foreign requests and console errors, checked at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    foreign, errors = [], []
    page.on(
        "request",
        lambda r: foreign.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None,
    )
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#t2i-generate")
    yield page
    context.close()
    assert foreign == [], f"the page reached beyond the server: {foreign[:5]}"
    assert errors == [], f"browser console errors: {errors[:5]}"


def set_number(page: Page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def downloaded_png(page: Page, files_id: str) -> bytes:
    link = page.locator(f"#{files_id} a").first
    link.wait_for()
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    return response.body()


def generate(page: Page, prompt: str, seed: int, steps: int) -> bytes:
    page.fill("#t2i-prompt textarea", prompt)
    set_number(page, "t2i-seed", seed)
    set_number(page, "t2i-steps", steps)
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-progress :text('done')", timeout=120_000)
    return downloaded_png(page, "t2i-files")


def test_generate_then_download_the_png_with_its_parameters(page, tmp_path, capsys):
    data = generate(page, "a handwritten digit 3", seed=5, steps=10)
    image = PIL.Image.open(io.BytesIO(data))
    prompt, _, settings = parse_parameters(read_png_text(data)["parameters"])
    assert (prompt, settings["Seed"], settings["Steps"], settings["Size"]) == (
        "a handwritten digit 3",
        "5",
        "10",
        "32x32",
    )
    assert page.input_value("#t2i-info textarea") == read_png_text(data)["parameters"]
    # the same pixels as the CLI for the same settings
    out = tmp_path / "cli.png"
    assert (
        main(
            [
                "generate",
                "a handwritten digit 3",
                "--seed",
                "5",
                "--steps",
                "10",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(PIL.Image.open(out).convert("RGB")))


def test_a_default_generate_shows_the_digit_and_equals_the_cli(page, tmp_path, capsys):
    """The fields start at the model's recommendation: Generate with only a seed is `sdlab generate`
    with no flags; the 32 x 32 result is shown enlarged inside the gallery, and it is the digit asked for."""
    from sdlab.digits.classifier import EVAL_CLASSIFIER, DigitClassifier
    from sdlab.digits.data import to_gray

    assert page.input_value("#t2i-steps input[type=number]") == str(DIGITS_STEPS)
    assert page.input_value("#t2i-cfg input[type=number]") == "3"
    assert page.input_value("#t2i-sampler input") == "UniPC"
    set_number(page, "t2i-seed", 12345)
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-progress :text('done')", timeout=120_000)
    assert page.inner_text("#t2i-progress").strip() == "done: 1 image"
    data = downloaded_png(page, "t2i-files")
    out = tmp_path / "cli.png"
    assert main(["generate", "a handwritten digit 7", "--seed", "12345", "-o", str(out)]) == 0
    capsys.readouterr()
    ui, cli = (np.asarray(PIL.Image.open(x).convert("RGB")) for x in (io.BytesIO(data), out))
    assert np.array_equal(ui, cli)
    pixels = torch.from_numpy(ui.copy()).permute(2, 0, 1)[None] / 255
    assert int(DigitClassifier.load(EVAL_CLASSIFIER).predict(to_gray(pixels))[0]) == 7
    shown, gallery = page.locator("#t2i-gallery img").first, page.locator("#t2i-gallery").bounding_box()
    box = shown.bounding_box()
    assert box["height"] >= 96 and box["width"] >= 96  # enlarged to be read ...
    assert box["y"] + box["height"] <= gallery["y"] + gallery["height"] + 1  # ... and whole, inside the box
    assert shown.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"


def test_a_batch_fits_the_gallery_and_the_fields_follow_the_model(page):
    set_number(page, "t2i-batch-size", 4)
    set_number(page, "t2i-seed", 3)
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-progress :text('done: 4 images')", timeout=120_000)
    gallery = page.locator("#t2i-gallery").bounding_box()
    images = page.locator("#t2i-gallery img")
    assert images.count() == 4
    for i in range(4):
        box = images.nth(i).bounding_box()
        assert box["height"] >= 96 and box["y"] + box["height"] <= gallery["y"] + gallery["height"] + 1
    # another model: its own settings (the tiny test model recommends nothing: sdlab's fallbacks)
    page.locator("#t2i-model input").click()
    page.get_by_role("option", name="tiny", exact=True).click()
    page.wait_for_function("document.querySelector('#t2i-steps input[type=number]').value === '30'")
    assert page.input_value("#t2i-cfg input[type=number]") == "7.5"
    assert page.input_value("#t2i-sampler input") == "PLMS"
    # an SDXL model: its own sampler (Euler, from its scheduler config) and size, and it generates
    page.locator("#t2i-model input").click()
    page.get_by_role("option", name="tiny-xl", exact=True).click()
    page.wait_for_function("document.querySelector('#t2i-sampler input').value === 'Euler'")
    assert page.input_value("#t2i-width input[type=number]") == "32"
    assert page.locator("#t2i-sdxl").is_visible()  # SDXL's size conditioning, for SDXL models only
    # a few-step preset sets its card's sampler, schedule type, steps and CFG
    page.locator("#t2i-conditioning").get_by_text("Conditioning and few-step presets").click()
    page.locator("#t2i-preset input").click()
    page.get_by_role("option", name="sdxl-lightning-4step", exact=True).click()
    page.wait_for_function("document.querySelector('#t2i-schedule input').value === 'SGM Uniform'")
    assert page.input_value("#t2i-steps input[type=number]") == "4"
    assert page.input_value("#t2i-cfg input[type=number]") == "0"
    page.locator("#t2i-sdxl").get_by_text("SDXL size conditioning").click()
    page.fill("#t2i-original-size :is(textarea, input)", "16,16")
    set_number(page, "t2i-batch-size", 1)
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-progress :text('done: 1 image')", timeout=120_000)
    assert page.locator("#t2i-gallery img").count() == 1
    parameters = page.input_value("#t2i-info textarea")
    assert "Steps: 4, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: 0" in parameters
    page.locator("#t2i-model input").click()
    page.get_by_role("option", name="digits", exact=True).click()
    page.wait_for_function(
        f"document.querySelector('#t2i-steps input[type=number]').value === '{DIGITS_STEPS}'"
    )
    assert not page.locator("#t2i-sdxl").is_visible()


def test_png_info_round_trip_fills_txt2img(page, tmp_path):
    data = generate(page, "a thick handwritten digit 8", seed=42, steps=6)
    path = tmp_path / "made.png"
    path.write_bytes(data)
    page.fill("#t2i-prompt textarea", "something else")
    set_number(page, "t2i-seed", 1)
    page.get_by_role("tab", name="PNG info").click()
    page.locator("#png-file input[type=file]").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#png-parameters textarea').value.includes('Seed: 42')")
    assert page.input_value("#png-parameters textarea") == read_png_text(data)["parameters"]
    page.click("#png-send")
    page.wait_for_function(
        "document.querySelector('#t2i-prompt textarea').value === 'a thick handwritten digit 8'"
    )
    assert page.input_value("#t2i-seed input") == "42"
    assert page.input_value("#t2i-steps input[type=number]") == "6"


def test_interrupt_stops_a_long_run(page):
    page.fill("#t2i-prompt textarea", "a handwritten digit 1")
    set_number(page, "t2i-steps", 150)
    set_number(page, "t2i-width", 256)
    set_number(page, "t2i-height", 256)
    page.click("#t2i-generate")
    # any step under way before the last (a poll may pass over many steps: deep-cached steps are quick)
    page.wait_for_function(
        "() => /step ([1-9]|[1-9][0-9]|1[0-4][0-9])\\/150/.test(document.querySelector('#t2i-progress')?.innerText ?? '')",
        timeout=120_000,
    )
    page.click("#t2i-interrupt")
    page.wait_for_selector("#t2i-progress :text('done')", timeout=60_000)
    assert "1 stopped early" in page.inner_text("#t2i-progress")
    data = downloaded_png(page, "t2i-files")
    import json

    assert json.loads(read_png_text(data)["sdlab"])["stopped_at_step"] < 150


def test_xy_plot_gives_a_labelled_grid_of_the_right_size(page):
    page.get_by_role("tab", name="X/Y plot").click()
    page.fill("#xy-prompt textarea", "a handwritten digit 4")
    set_number(page, "xy-per-cell", 2)
    page.fill("#xy-x-values textarea", "1, 4, 8")
    page.fill("#xy-y-values textarea", "4, 8")
    page.click("#xy-run")
    page.wait_for_selector("#xy-table table", timeout=120_000)
    rows = page.locator("#xy-table table tr")
    assert rows.count() == 3  # header + 2 steps values
    assert [c.strip() for c in rows.nth(0).inner_text().split("\t") if c.strip()] == ["1.0", "4.0", "8.0"]
    assert all("%" in rows.nth(r).inner_text() for r in (1, 2))
    grid = PIL.Image.open(io.BytesIO(downloaded_png(page, "xy-file")))
    # 3 columns x 2 rows of cells, each 2 digits of 96 px side by side, plus labels
    assert 3 * 2 * 96 < grid.width < 3 * 2 * 96 + 300 and 2 * 96 < grid.height < 2 * 96 + 120
    left = np.asarray(grid.convert("L"))[:, :40]
    assert (left < 128).any(), "the y labels are drawn left of the grid"


def test_the_lab_strip_shows_one_frame_per_step(page):
    page.get_by_role("tab", name="Lab").click()
    page.fill("#lab-prompt textarea", "a thick handwritten digit 7")
    set_number(page, "lab-steps", 7)
    set_number(page, "lab-cfg", 4)
    page.click("#lab-run")
    page.wait_for_selector("#lab-attention img", timeout=120_000)
    assert page.locator("#lab-latents img").count() == 7
    assert page.locator("#lab-x0 img").count() == 7
    assert page.locator("#lab-split-images img").count() == 3
    words = page.locator("#lab-attention").inner_text()
    assert "thick" in words and "7" in words


def test_a_mask_drawn_in_the_browser_repaints_only_where_it_was_drawn(page):
    init = PIL.Image.open(io.BytesIO(generate(page, "a handwritten digit 0", seed=9, steps=10))).convert("L")
    page.click("#t2i-send")
    canvas = page.locator("#i2i-image canvas").first
    canvas.wait_for()
    page.wait_for_timeout(1000)  # the sent image is still being laid onto the canvas
    box = canvas.bounding_box()
    middle = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * 0.35, middle)  # the image sits in the canvas's middle
    page.mouse.down()
    for i in range(1, 21):  # the editor draws from pointer events spaced in time, as a hand makes them
        page.mouse.move(box["x"] + box["width"] * (0.35 + 0.0125 * i), middle)
        page.wait_for_timeout(20)
    page.mouse.up()
    page.fill("#i2i-prompt textarea", "a handwritten digit 1")
    set_number(page, "i2i-strength", 1.0)
    set_number(page, "i2i-seed", 4)
    page.locator("#i2i-inpaint input").check()
    page.click("#i2i-generate")
    page.wait_for_selector("#i2i-progress :text('done')", timeout=120_000)
    result = PIL.Image.open(io.BytesIO(downloaded_png(page, "i2i-files"))).convert("L")
    change = np.abs(np.asarray(result, dtype=float) - np.asarray(init, dtype=float)).mean(axis=1)
    assert result.size == init.size == (32, 32)
    assert change[12:20].mean() > 4 * change[:4].mean(), change.round(1)  # the stroke's rows, not the top
