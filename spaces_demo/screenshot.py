"""Drive the demo in a real Chromium: upload, upscale, read the detail view, measure, screenshot. Shared by the browser test.

    python spaces_demo/screenshot.py --model bsr-lite-x2            # the README's docs/images/demo.png
    python spaces_demo/screenshot.py                                  # no model given: an UNTRAINED bsr-lite

Uses Debian's Chromium (`apt-get install -y chromium`); `playwright install` is never needed. Without --model
the screenshot shows a randomly initialised network, and says so: its folder is named "untrained-bsr-lite-x2",
which the info line under the result prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # Chromium's own phoning home would count as a foreign request
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass
class BrowserReport:
    natural_width: int
    natural_height: int
    info: str
    requests_seen: int
    """How many requests the page made at all (so an empty foreign list means something)."""
    detail_sizes: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    """Drawn (CSS pixel) sizes of the bicubic and BSR detail images, once both have loaded."""
    detail_pixels_differ: int = 0
    """How many pixels differ between the bicubic and the BSR detail, as the page received them."""
    foreign_requests: list[str] = field(default_factory=list)
    """Every request to a host other than this machine (the page must make none)."""
    console_errors: list[str] = field(default_factory=list)


def drive_demo(url: str, image: Path, screenshot: Path, timeout_s: float = 60.0) -> BrowserReport:
    """Open the demo at `url`, upload `image`, click Upscale, wait for the result, save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    timeout_ms = timeout_s * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(url, wait_until="load", timeout=timeout_ms)
            page.locator("#bsr-input input[type=file]").set_input_files(str(image), timeout=timeout_ms)
            page.locator("#bsr-input img").first.wait_for(
                state="visible", timeout=timeout_ms
            )  # upload finished
            page.locator("#bsr-run").click(timeout=timeout_ms)
            page.wait_for_function(
                "() => { const i = document.querySelector('#bsr-output img');"
                " return i !== null && i.complete && i.naturalWidth > 0; }",
                timeout=timeout_ms,
            )
            page.locator("#bsr-info").get_by_text("parameters").wait_for(timeout=timeout_ms)
            size = page.evaluate(
                "() => { const i = document.querySelector('#bsr-output img'); return [i.naturalWidth, i.naturalHeight]; }"
            )
            info = page.locator("#bsr-info").inner_text()
            details = []
            for elem_id in ("bsr-detail-bicubic", "bsr-detail-bsr"):
                page.wait_for_function(
                    f"() => {{ const i = document.querySelector('#{elem_id} img');"
                    " return i !== null && i.complete && i.naturalWidth > 0; }",
                    timeout=timeout_ms,
                )
                img = page.locator(f"#{elem_id} img").first
                img.scroll_into_view_if_needed()
                box = img.bounding_box()
                body = page.request.get(img.get_attribute("src")).body()  # the PNG the page shows
                details.append(((round(box["width"]), round(box["height"])), body))
            (shown_bicubic, png_bicubic), (shown_bsr, png_bsr) = details
            page.evaluate("() => window.scrollTo(0, 0)")
            page.wait_for_timeout(500)  # let the slider's images paint before the screenshot
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    foreign = [
        u
        for u in requests
        if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).hostname not in LOCAL_HOSTS
    ]
    return BrowserReport(
        size[0], size[1], info, len(requests), (shown_bicubic, shown_bsr),
        _pixels_differ(png_bicubic, png_bsr), foreign, errors,
    )


def _pixels_differ(png_a: bytes, png_b: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png_a)).convert("RGB"))
    b = np.asarray(Image.open(io.BytesIO(png_b)).convert("RGB"))
    if a.shape != b.shape:
        return a.shape[0] * a.shape[1]
    return int((a != b).any(axis=2).sum())


def _untrained_checkpoint(root: Path) -> Path:
    import torch

    from bsr_hub import BSRModel

    torch.manual_seed(0)
    folder = root / "untrained-bsr-lite-x2"
    BSRModel.from_preset("bsr-lite", scale=2).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", help="checkpoint(s) to serve (default: an untrained bsr-lite)"
    )
    parser.add_argument("--image", default=None, help="image to upload (default: the bundled chelsea.png)")
    parser.add_argument("-o", "--output", default="docs/images/demo.png", help="screenshot path")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each browser step may take (a loaded CPU)")
    args = parser.parse_args(argv)

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from bsr_hub.core.examples import EXAMPLES_DIR
    from bsr_hub.demo import DemoSettings, build_demo, serve

    with tempfile.TemporaryDirectory() as tmp:
        models = args.model or [str(_untrained_checkpoint(Path(tmp)))]
        demo = build_demo(DemoSettings(models=tuple(models)))
        serve(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        try:
            report = drive_demo(
                demo.local_url, Path(args.image or EXAMPLES_DIR / "chelsea.png"), Path(args.output), args.timeout
            )
        finally:
            demo.close()
    print(f"wrote {args.output}: result {report.natural_width}x{report.natural_height}; {report.info}")
    for problem in report.foreign_requests + report.console_errors:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if report.foreign_requests or report.console_errors else 0


if __name__ == "__main__":
    sys.exit(main())
