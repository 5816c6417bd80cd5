"""The demo's page: its components, built one part at a time (header, inputs, outputs, detail view, examples),
and the guard that makes the file components take only files already on the server. The events that connect
them are `app`'s. Gradio is passed in by `app.build_demo` (imported there, lazily).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .models import DEFAULT_CHOICE_INFO, NO_MODEL_MESSAGE, ModelEntry
from .settings import DemoSettings
from .upscaling import TILE_CHOICES

if TYPE_CHECKING:
    import gradio as gr

REMOTE_FILE_MESSAGE = (
    "This demo takes only uploaded files and fetches nothing from other machines; upload the image instead "
    "of passing a URL (gradio_client: handle_file('photo.png') with a local path)."
)


def _refuse_remote(path: Any) -> None:
    """Raise the user-facing refusal when `path` is a URL (what Gradio would otherwise download)."""
    if str(path).lower().startswith(("http://", "https://")):
        import gradio as gr

        raise gr.Error(REMOTE_FILE_MESSAGE, print_exception=False)


def _local_files_only(component: gr.Component) -> gr.Component:
    """Make `component` take only files already on the server (uploads, the bundled examples, our results).

    Gradio resolves and downloads a FileData whose path is an http(s) URL when it moves an event's inputs into
    its cache, before any event function runs, so the refusal has to sit in the component's two cache methods.
    They are wrapped on the instance: a subclass of a Gradio component would make Gradio write a `.pyi` stub
    next to this module at run time.
    """
    move, async_move = component.move_resource_to_block_cache, component.async_move_resource_to_block_cache

    def local_only(url_or_file_path: Any) -> str | None:
        _refuse_remote(url_or_file_path)
        return move(url_or_file_path)

    async def async_local_only(url_or_file_path: Any) -> str | None:
        _refuse_remote(url_or_file_path)
        return await async_move(url_or_file_path)

    component.move_resource_to_block_cache = local_only
    component.async_move_resource_to_block_cache = async_local_only
    return component


class InputComponents(NamedTuple):
    """The left column's components, the inputs of /upscale."""

    image: Any
    model: Any
    self_ensemble: Any
    tile: Any
    button: Any


class OutputComponents(NamedTuple):
    """The right column's components, the outputs of /upscale."""

    result: Any
    slider: Any
    info: Any


class DetailComponents(NamedTuple):
    """The detail view's two images and its position sliders (percent of width and height)."""

    bicubic: Any
    bsr: Any
    x: Any
    y: Any


def page_header(gr: Any, settings: DemoSettings, entries: Sequence[ModelEntry]) -> None:
    """The title, what the demo accepts and which models suit which photos; a notice when there is no model."""
    gr.Markdown(
        "# BSR super-resolution\n"
        "Upscale a photo with a [BSR](https://doi.org/10.23919/ituk50268.2020.9303225) model from "
        f"bsr_hub. Inputs up to {settings.max_megapixels:g} megapixels; "
        "the result is a lossless PNG."
        + (
            " Models marked *for real photos* were trained on images shrunk by many resizers, with JPEG and "
            "noise: use them for photos of unknown origin; the others are trained and measured on "
            "benchmark-style inputs (MATLAB bicubic) and can do worse than plain upscaling on other inputs."
            if any(e.trained_for == "real" for e in entries) else ""
        )
    )
    if not entries:
        gr.Markdown(f"**{NO_MODEL_MESSAGE}**", elem_id="bsr-no-model")


def input_column(gr: Any, labels: list[str], entries: Sequence[ModelEntry]) -> InputComponents:
    """The left column: the upload, the model, self-ensemble, tiling and the button."""
    with gr.Column():
        # The event runs with preprocess=False: Gradio's own preprocessing would decode a
        # non-image before our checks and answer with a bare "Error". We open the file ourselves.
        image = _local_files_only(
            gr.Image(
                label="Input image", type="filepath", sources=["upload", "clipboard"], elem_id="bsr-input"
            )
        )
        model_choice = gr.Radio(
            choices=labels,
            value=labels[0],  # the default (`default_label`): build_demo puts it first
            label="Scale and model",
            info=DEFAULT_CHOICE_INFO if any(e.trained_for == "real" for e in entries) else None,
            visible=bool(entries),
            elem_id="bsr-model",
        )
        self_ensemble = gr.Checkbox(
            value=False,
            label="Self-ensemble (average of 8 flips/rotations; 8x slower, slightly sharper)",
        )
        tile = gr.Dropdown(
            choices=TILE_CHOICES,
            value="auto",
            allow_custom_value=True,  # any tile size in input pixels
            label="Tiling: auto (the whole image, or cache-sized tiles where faster), one pass (the whole "
            "image at once), or a tile size in input pixels (less memory; result within 1 grey level)",
        )
        button = gr.Button("Upscale", variant="primary", interactive=bool(entries), elem_id="bsr-run")
    return InputComponents(image, model_choice, self_ensemble, tile, button)


def output_column(gr: Any) -> OutputComponents:
    """The right column: the result (a PNG to download), the bicubic/BSR slider and what was done."""
    with gr.Column():
        output = _local_files_only(  # also an input, of the detail events
            gr.Image(
                label="BSR result (PNG)",
                format="png",
                type="pil",
                interactive=False,
                buttons=["download", "fullscreen"],
                elem_id="bsr-output",
            )
        )
        slider = gr.ImageSlider(
            label="Bicubic (left) vs BSR (right)",
            format="png",
            type="pil",
            image_mode=None,
            interactive=False,
            elem_id="bsr-slider",
        )
        info = gr.Markdown(label="info", elem_id="bsr-info")
    return OutputComponents(output, slider, info)


def detail_group(gr: Any) -> DetailComponents:
    """The detail view: bicubic and BSR over one region, and the sliders that move it."""
    with gr.Group(elem_id="bsr-detail"):
        gr.Markdown(
            "**Detail**: the region with the most structure (highest PIC), every output pixel drawn as a "
            "square. Move it with the sliders."
        )
        with gr.Row():
            detail_bicubic = gr.Image(
                label="Bicubic (detail)", format="png", type="pil", interactive=False,
                buttons=["fullscreen"], elem_id="bsr-detail-bicubic",
            )
            detail_bsr = gr.Image(
                label="BSR (detail)", format="png", type="pil", interactive=False,
                buttons=["fullscreen"], elem_id="bsr-detail-bsr",
            )
        with gr.Row():
            detail_x = gr.Slider(0, 100, value=50, step=0.5, label="Detail position, % of width",
                                 elem_id="bsr-detail-x")
            detail_y = gr.Slider(0, 100, value=50, step=0.5, label="Detail position, % of height",
                                 elem_id="bsr-detail-y")
    return DetailComponents(detail_bicubic, detail_bsr, detail_x, detail_y)


def example_photos(gr: Any, image: Any) -> None:
    """The example photos shipped with bsr_hub, as inputs of the upload."""
    from ..core import example_images

    gr.Examples(
        examples=[[str(p)] for p in example_images()],
        inputs=[image],
        label="Example photos (CC0 / public domain, shipped with bsr_hub)",
        cache_examples=False,
    )
