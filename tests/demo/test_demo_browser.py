"""The demo in a real browser: Debian's Chromium driven by Playwright, against a server on 127.0.0.1.

The driving code is spaces_demo/screenshot.py's `drive_demo`, the same code that makes the README's screenshot.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'bsr-hub[test]')")

from conftest import REPO_ROOT, tiny_config

from bsr_hub import BSRModel
from bsr_hub.core.examples import example_images
from bsr_hub.demo import DemoSettings, build_demo, serve

_spec = importlib.util.spec_from_file_location(
    "spaces_demo_screenshot", REPO_ROOT / "spaces_demo" / "screenshot.py"
)
screenshot = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = screenshot  # its dataclasses look their module up there
_spec.loader.exec_module(screenshot)

ARTIFACT = REPO_ROOT / "test-artifacts" / "demo.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not screenshot.CHROMIUM.is_file(),
        reason=f"Chromium is not installed at {screenshot.CHROMIUM} (apt-get install -y chromium)",
    ),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def test_upload_upscale_and_result_in_chromium(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "tiny-test-x2"
    BSRModel(tiny_config(scale=2)).eval().save_pretrained(folder)
    demo = build_demo(DemoSettings(models=(str(folder),)))
    serve(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    image = next(p for p in example_images() if p.name == "chelsea.png")
    try:
        report = screenshot.drive_demo(demo.local_url, image, ARTIFACT)
    finally:
        demo.close()
    with Image.open(image) as img:
        assert (report.natural_width, report.natural_height) == (img.width * 2, img.height * 2)
    assert "tiny-test-x2" in report.info and "not evaluated" in report.info
    # The detail view: both sides drawn at a readable size, and they are not the same picture.
    for width, height in report.detail_sizes:
        assert width >= 200 and height >= 200
    total = report.detail_sizes[0][0] * report.detail_sizes[0][1]
    assert report.detail_pixels_differ > 0, f"bicubic and BSR details are identical ({total} px drawn)"
    assert report.requests_seen > 10  # the page, its scripts, the upload, the queue, the result
    assert report.foreign_requests == []  # no CDN, no analytics, no fonts from elsewhere
    assert report.console_errors == []
    with Image.open(ARTIFACT) as shot:
        assert shot.width >= 1280 and shot.height > 600


def test_oversize_upload_shows_the_limit_in_the_page(tmp_path):
    from playwright.sync_api import sync_playwright

    torch.manual_seed(0)
    folder = tmp_path / "tiny-test-x2"
    BSRModel(tiny_config(scale=2)).eval().save_pretrained(folder)
    Image.new("RGB", (700, 600), "grey").save(tmp_path / "big.png")
    demo = build_demo(DemoSettings(models=(str(folder),), max_megapixels=0.3))
    serve(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(screenshot.CHROMIUM), args=screenshot.CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_page()
                page.goto(demo.local_url, wait_until="load")
                page.locator("#bsr-input input[type=file]").set_input_files(str(tmp_path / "big.png"))
                page.locator("#bsr-input img").first.wait_for(state="visible", timeout=30_000)
                page.locator("#bsr-run").click()
                # The error toast, in words the user can act on; and no result appears.
                page.get_by_text("this demo accepts up to 0.3 megapixels").first.wait_for(timeout=30_000)
                assert page.locator("#bsr-output img").count() == 0
            finally:
                browser.close()
    finally:
        demo.close()
