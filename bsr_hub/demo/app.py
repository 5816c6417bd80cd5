"""The Gradio demo: `bsr-hub demo`, and what `spaces_demo/app.py` deploys as a Hugging Face Space.

What it guarantees, whoever calls it (a browser, `gradio_client`, a script hammering the API):

- each model is loaded once, on first use, and kept (`ModelCache`); inference runs on a GPU when there is one;
- an upload is checked before it is decoded: not an image, over the pixel limit, or a decompression bomb is a
  visible error that says why (`open_upload`), never a crash, a hang or an exhausted machine;
- the queue runs a bounded number of upscales at a time and holds a bounded number of waiting requests;
- nothing is fetched from outside the machine (analytics off; Gradio serves its own fonts and scripts; an API
  call that names a URL instead of uploading a file is refused before Gradio would download it);
- every result is a file of its own, complete before its path is handed out (`publish_png`), so identical
  requests at once (everyone clicking the same example) cannot read each other's half-written files;
- with no model to run, the page says so and upscales nothing (no random-weight output passed off as a result).

Everything except `build_demo` and `serve` works without gradio, so the limits are testable on their own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from .models import NO_MODEL_MESSAGE, ModelCache, ModelEntry, default_label, discover_models
from .page import (
    DetailComponents,
    InputComponents,
    OutputComponents,
    detail_group,
    example_photos,
    input_column,
    output_column,
    page_header,
)
from .settings import DemoInputError, DemoSettings
from .upscaling import detail_views, display_copy, most_structured_point, open_upload, upscale_upload

if TYPE_CHECKING:
    import gradio as gr

API_NAME = "upscale"
NO_MODEL_CHOICE = "no model"


def publish_png(img: Image.Image, folder: str | os.PathLike, name: str) -> str:
    """Write `img` as a lossless PNG in a new folder of its own under `folder` (Gradio's cache) and return its
    path, for a component to serve as it is.

    Returning the PIL image instead lets Gradio write it to a path named by its content hash, rewritten in
    place by every request with the same result: a user downloading it while another request rewrote it got
    a truncated or empty PNG (issue 12). Here no other request ever writes to the path, the file is complete
    before the path is returned, and Gradio serves a file already in its cache without copying it again.
    Gradio's `delete_cache` removes it with its other temporary files.
    """
    os.makedirs(folder, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="bsr-", dir=folder)) / name
    try:
        img.save(path, format="PNG")
    except BaseException:  # a half-written file must not stay behind (a full disk, an unsavable mode)
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    return str(path)


def require_gradio() -> Any:
    """Import gradio with analytics off (it would otherwise call home), or say which extra installs it."""
    from ..core import require

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    return require("gradio", extra="demo", what="the demo")


def _upload_path(payload: Any) -> str:
    """The server-side path of an uploaded image (the event runs with preprocess=False, see build_demo)."""
    if payload is None:
        raise DemoInputError("Upload an image first.")
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    if not path:
        raise DemoInputError("The upload did not arrive; try again.")
    return str(path)


def build_demo(
    settings: DemoSettings | None = None, entries: Sequence[ModelEntry] | None = None
) -> gr.Blocks:
    """The demo as a `gr.Blocks`, queue configured, not launched. Importing spaces_demo/app.py calls this."""
    gr = require_gradio()

    settings = settings or DemoSettings.from_env()
    entries = discover_models(settings.models) if entries is None else list(entries)
    cache = ModelCache(entries)
    # With no model the radio still has one (hidden) value, so an API call with only the image reaches
    # `upscale` and gets the "no trained model" message instead of "missing argument".
    labels = [e.label for e in entries] or [NO_MODEL_CHOICE]
    labels.sort(key=lambda label: label != (default_label(entries) or label))  # the default first

    with gr.Blocks(title="BSR super-resolution", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        page_header(gr, settings, entries)
        with gr.Row():
            inputs = input_column(gr, labels, entries)
            outputs = output_column(gr)
        details = detail_group(gr)
        example_photos(gr, inputs.image)
        _wire_events(gr, settings, entries, cache, labels, inputs, outputs, details)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    demo.bsr_settings = settings  # serve() reads the upload limit from here
    return demo


# ---------------------------------------------------------------------------------------------- the events


def _wire_events(
    gr: Any,
    settings: DemoSettings,
    entries: Sequence[ModelEntry],
    cache: ModelCache,
    labels: list[str],
    inputs: InputComponents,
    outputs: OutputComponents,
    details: DetailComponents,
) -> None:
    """/upscale (the documented API), then the detail view; a new upload clears the last result."""
    upscale = _upscale_event(gr, settings, entries, cache, labels, outputs.result)
    detail, locate_detail = _detail_events(settings, outputs.result)
    inputs.button.click(
        upscale,
        inputs=[inputs.image, inputs.model, inputs.self_ensemble, inputs.tile],
        outputs=[outputs.result, outputs.slider, outputs.info],
        api_name=API_NAME,
        preprocess=False,
        concurrency_limit=settings.concurrency,
    ).success(
        locate_detail,
        inputs=[inputs.image, outputs.result],
        outputs=[details.x, details.y, details.bicubic, details.bsr],
        api_visibility="private",
    )
    inputs.image.change(clear_result, outputs=[outputs.result, outputs.slider, outputs.info, details.bicubic,
                                               details.bsr], api_visibility="private", queue=False)
    for moved in (details.x, details.y):
        moved.release(
            detail,
            inputs=[inputs.image, outputs.result, details.x, details.y],
            outputs=[details.bicubic, details.bsr],
            api_visibility="private",
        )


def _upscale_event(
    gr: Any, settings: DemoSettings, entries: Sequence[ModelEntry], cache: ModelCache, labels: list[str],
    output: Any,
) -> Callable[[Any, str | None, bool, Any], tuple[Any, Any, str]]:
    """The /upscale event: one request through `upscale_upload`, its images published as files."""

    # Parameter names are what the API documents: predict(image, model=..., self_ensemble=..., tile=...).
    def upscale(image: Any, model: str | None, self_ensemble: bool, tile: Any) -> tuple[Any, Any, str]:
        if not entries:
            raise gr.Error(NO_MODEL_MESSAGE)
        label = model or labels[0]
        try:
            upload = _upload_path(image)
            out = upscale_upload(
                cache, upload, label, self_ensemble=self_ensemble, tile=tile, max_pixels=settings.max_pixels
            )
        except DemoInputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        # Files, not PIL images: see publish_png. The download is named after the upload.
        cache_dir = output.GRADIO_CACHE
        png = publish_png(out.image, cache_dir, f"{Path(upload).stem}_x{cache.entries[label].scale}.png")
        shown = display_copy(out.image)
        slider_bsr = png if shown is out.image else publish_png(shown, cache_dir, "bsr.png")
        return png, (publish_png(out.bicubic, cache_dir, "bicubic.png"), slider_bsr), out.info

    return upscale


def _detail_events(settings: DemoSettings, output: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(detail, locate_detail): the detail view at the sliders' position, or at the most structured region."""

    def publish_details(views: tuple[Image.Image, Image.Image]) -> tuple[str, str]:
        bicubic, bsr = views
        cache_dir = output.GRADIO_CACHE
        return publish_png(bicubic, cache_dir, "bicubic.png"), publish_png(bsr, cache_dir, "bsr.png")

    # The detail view runs as its own events, after /upscale, so the API keeps its documented return.
    def detail(image: Any, result: Any, x: float, y: float) -> tuple[Any, Any]:
        if image is None or result is None:
            return None, None
        with open_upload(image, settings.max_pixels) as upload:
            try:  # a result left from another upload (clear_result empties it; this is the guard behind that)
                return publish_details(detail_views(ImageOps.exif_transpose(upload), result, x / 100, y / 100))
            except ValueError:
                return None, None

    def locate_detail(image: Any, result: Any) -> tuple[float, float, Any, Any]:
        if image is None or result is None:
            return 50.0, 50.0, None, None
        with open_upload(image, settings.max_pixels) as upload:
            upload = ImageOps.exif_transpose(upload)
            x, y = most_structured_point(upload)
            try:
                bicubic, bsr = publish_details(detail_views(upload, result, x, y))
            except ValueError:
                return 50.0, 50.0, None, None
        return round(100 * x, 1), round(100 * y, 1), bicubic, bsr

    return detail, locate_detail


def clear_result() -> tuple[None, None, str, None, None]:
    """A new upload empties the previous result and its details: shown beside the new image's bicubic, they
    would pass for its own."""
    return None, None, "", None, None


def serve(
    demo: gr.Blocks, server_name: str | None = None, server_port: int | None = None, **launch_kwargs: Any
) -> Any:
    """Launch `demo`. Host and port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (what Spaces sets),
    else 127.0.0.1 and the first free port from 7860."""
    settings = getattr(demo, "bsr_settings", DemoSettings())
    launch_kwargs.setdefault("max_file_size", settings.max_file_size)
    launch_kwargs.setdefault("ssr_mode", False)  # no Node.js server: one process, nothing else to install
    return demo.launch(server_name=server_name, server_port=server_port, **launch_kwargs)
