"""Screenshots of every tab of `sdlab serve`'s web UI (docs/ui/*.png), and the time to a usable page.

Starts `sdlab serve` on a free port, measures the seconds from the command to a page whose Generate
button can be clicked, then drives each tab in Debian's chromium (Playwright) and saves a screenshot.

    python scripts/ui_screenshots.py [--out docs/ui]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="runs/ui", help="folder for the screenshots (docs/ui holds the docs' copies)"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sdlab.cli.main", "serve", "--port", str(port)])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            while True:
                try:
                    page.goto(url)
                    page.wait_for_selector("#t2i-generate", timeout=5_000)
                    break
                except Exception:
                    if server.poll() is not None or time.perf_counter() - start > 180:
                        raise
                    time.sleep(0.2)
            usable = time.perf_counter() - start
            shoot_all(page, out)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"from `sdlab serve` to a usable page: {usable:.1f} s; screenshots in {out}/")
    return 0


def number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def shoot_all(page, out: Path) -> None:
    # txt2img: a batch of eight
    page.fill("#t2i-prompt textarea", "a thick handwritten digit 7")
    number(page, "t2i-seed", 3)
    number(page, "t2i-batch-size", 8)
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-progress :text('done')", timeout=120_000)
    page.locator("#t2i-gallery .thumbnail-item").first.click()
    page.screenshot(path=out / "txt2img.png", full_page=True)

    # img2img: the first result sent over, a stroke drawn across it, inpainted as an 8
    page.click("#t2i-send")
    page.wait_for_selector("#i2i-image canvas")
    page.wait_for_timeout(1000)  # the sent image is still being laid onto the canvas
    canvas = page.locator("#i2i-image canvas").first
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    for i in range(1, 21):  # the editor draws from pointer events spaced in time, as a hand makes them
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.02 * i), box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(20)
    page.mouse.up()
    page.fill("#i2i-prompt textarea", "a handwritten digit 8")
    page.locator("#i2i-inpaint input").check()
    number(page, "i2i-batch-size", 4)
    number(page, "i2i-seed", 2)
    page.click("#i2i-generate")
    page.wait_for_selector("#i2i-progress :text('done')", timeout=120_000)
    page.screenshot(path=out / "img2img.png", full_page=True)

    # PNG info: the first txt2img result dropped in
    link = page.locator("#t2i-files a").first.get_attribute("href")
    png = out.parent / ".screenshot-input.png"
    png.write_bytes(page.request.get(link).body())
    page.get_by_role("tab", name="PNG info").click()
    page.locator("#png-file input[type=file]").set_input_files(str(png))
    page.wait_for_function("document.querySelector('#png-parameters textarea').value.includes('Seed')")
    png.unlink()
    page.screenshot(path=out / "pnginfo.png", full_page=True)

    # X/Y plot: CFG scale against steps, judged by the digit classifier
    page.get_by_role("tab", name="X/Y plot").click()
    page.fill("#xy-prompt textarea", "a handwritten digit 4")
    page.fill("#xy-x-values textarea", "1, 1.5, 4, 8")
    page.fill("#xy-y-values textarea", "3, 10, 30")
    number(page, "xy-seed", 1)
    page.click("#xy-run")
    page.wait_for_selector("#xy-table table", timeout=300_000)
    page.screenshot(path=out / "xyplot.png", full_page=True)

    # Lab: noise to digit, guidance split, gradient guidance, attention
    page.get_by_role("tab", name="Lab").click()
    page.fill("#lab-prompt textarea", "a thick handwritten digit")  # the digit comes from the guide
    number(page, "lab-steps", 10)
    number(page, "lab-seed", 1)
    number(page, "lab-cfg", 4)
    number(page, "lab-split", 3)
    page.locator("#lab-guide input").click()
    page.get_by_role("option", name="7", exact=True).click()
    page.click("#lab-run")
    page.wait_for_selector("#lab-attention img", timeout=120_000)
    page.screenshot(path=out / "lab.png", full_page=True)


if __name__ == "__main__":
    sys.exit(main())
