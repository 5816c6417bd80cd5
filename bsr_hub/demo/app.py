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
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

if TYPE_CHECKING:
    import gradio as gr

    from ..models.modeling import BSRModel

DEFAULT_MAX_MEGAPIXELS = 2.0
"""Largest input accepted (width x height). At x4 a 2-megapixel input is a 32-megapixel output: the most a
shared CPU Space should be asked for in one request."""

API_NAME = "upscale"
NO_MODEL_CHOICE = "no model"
NO_MODEL_MESSAGE = (
    "No trained model is bundled with this version of bsr_hub, so this demo has nothing to upscale with "
    "(it will not show the output of untrained weights). Start it with a checkpoint: "
    "`bsr-hub demo --model PATH_OR_REPO_ID`, or set BSR_DEMO_MODELS=PATH_OR_REPO_ID for spaces_demo/app.py."
)
REMOTE_FILE_MESSAGE = (
    "This demo takes only uploaded files and fetches nothing from other machines; upload the image instead "
    "of passing a URL (gradio_client: handle_file('photo.png') with a local path)."
)
DETAIL_INPUT_PX = 48
"""Side of the detail region in input pixels (shown as DETAIL_INPUT_PX * scale output pixels per side)."""
DETAIL_DISPLAY_PX = 400
"""About how wide each detail is drawn: output pixels are enlarged by a whole factor, nearest-neighbour, so that
every pixel the network made is a visible square, not smoothed again by the browser."""


class DemoInputError(ValueError):
    """An upload or setting the demo refuses; the message is shown to the user as it is."""


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DemoSettings:
    """What the demo serves and how much it accepts. `from_env` reads the same values from BSR_DEMO_*."""

    models: tuple[str, ...] = ()
    """Checkpoints to offer (bundled names, folders or Hub repo ids). Empty: every bundled checkpoint."""
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    concurrency: int = 1
    """Upscales running at once. One keeps a CPU's threads on one image (no slower per request, and memory
    stays that of one image); raise it on a large GPU."""
    queue_size: int = 16
    """Requests allowed to wait; a burst beyond it is turned away ("queue is full") instead of piling up."""
    max_file_size: str = "50mb"
    """Largest upload Gradio accepts at all, before any decoding."""

    def __post_init__(self) -> None:
        if not self.max_megapixels > 0:
            raise ValueError(f"max_megapixels must be positive, got {self.max_megapixels}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> DemoSettings:
        """BSR_DEMO_MODELS (comma-separated), BSR_DEMO_MAX_MEGAPIXELS, BSR_DEMO_CONCURRENCY, BSR_DEMO_QUEUE_SIZE;
        keyword arguments that are not None win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        try:
            if env.get("BSR_DEMO_MODELS", "").strip():
                values["models"] = tuple(m.strip() for m in env["BSR_DEMO_MODELS"].split(",") if m.strip())
            if "BSR_DEMO_MAX_MEGAPIXELS" in env:
                values["max_megapixels"] = float(env["BSR_DEMO_MAX_MEGAPIXELS"])
            if "BSR_DEMO_CONCURRENCY" in env:
                values["concurrency"] = int(env["BSR_DEMO_CONCURRENCY"])
            if "BSR_DEMO_QUEUE_SIZE" in env:
                values["queue_size"] = int(env["BSR_DEMO_QUEUE_SIZE"])
        except ValueError as err:
            raise ValueError(f"bad BSR_DEMO_* environment variable: {err}") from err
        values.update({k: (tuple(v) if k == "models" else v) for k, v in overrides.items() if v is not None})
        return cls(**values)


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelEntry:
    """One choice in the demo: where the checkpoint is and what its card says, known before loading it."""

    name: str
    folder: Path
    scale: int
    preset: str
    source: str
    """"bundled", "local folder" or "Hugging Face Hub": shown next to the name, so nobody mistakes a
    test checkpoint for a shipped one."""
    benchmark: str
    """The measured PSNR from the checkpoint's card, as a short phrase, or "not evaluated"."""
    trained_for: str = "benchmark"
    """`records.trained_for`: "real" for a checkpoint trained on a degradation mix, shown in its label."""

    @property
    def label(self) -> str:
        return f"x{self.scale} · {self.name}" + (" · for real photos" if self.trained_for == "real" else "")


def card_psnr(folder: Path) -> str:
    """The benchmark PSNR recorded in `folder/README.md`'s model-index, as "Set5 (x2, BI): 37.10 dB", or
    "not evaluated". Set5 without self-ensemble is preferred, being the figure every paper reports first."""
    from ..models.records import card_eval_results

    try:
        results = card_eval_results(folder)
    except Exception:
        return "not evaluated (unreadable model card)"
    psnr = [r for r in results if str(r.metric_type).lower() == "psnr" and r.metric_value is not None]
    if not psnr:
        return "not evaluated"

    def rank(r: Any) -> tuple[bool, bool]:
        name = str(r.dataset_name)
        return (not name.startswith("Set5"), "self-ensemble" in name)

    best = min(psnr, key=rank)
    return f"{best.dataset_name}: {float(best.metric_value):.2f} dB PSNR"


def discover_models(names: Sequence[str] = ()) -> list[ModelEntry]:
    """The demo's choices, by scale: the given checkpoints, or else every bundled one.

    Only configs and cards are read here (weights load on first use). A given name that cannot be resolved is
    an error now, at start-up, rather than on the first request.
    """
    from ..models.configuration import BSRConfig
    from ..models.hub import bundled_checkpoints, resolve_checkpoint
    from ..models.records import trained_for

    bundled = bundled_checkpoints()

    def source_of(
        name: str,
    ) -> str:  # resolve_checkpoint's order: a folder, then a bundled name, then the Hub
        if Path(name).expanduser().is_dir():
            return "local folder"
        return "bundled" if name in bundled else "Hugging Face Hub"

    if names:
        sources = [(n, resolve_checkpoint(n), source_of(n)) for n in names]
    else:
        sources = [(n, folder, "bundled") for n, folder in bundled.items()]
    entries = []
    for name, folder, source in sources:
        config = BSRConfig.from_json_file(folder / "config.json")
        entries.append(
            ModelEntry(
                name=Path(name).name if source == "local folder" else name,
                folder=folder,
                scale=config.scale,
                preset=config.preset or "custom",
                source=source,
                benchmark=card_psnr(folder),
                trained_for=trained_for(folder),
            )
        )
    labels = [e.label for e in entries]
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise ValueError(
            f"two models would share the label {duplicates[0]!r}; give the checkpoint folders distinct names"
        )
    return sorted(entries, key=lambda e: (e.scale, e.name))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCache:
    """Each model loaded once, on first use, then shared by every request (loading per request is the
    classic demo mistake: seconds of latency and a copy of the weights per concurrent user)."""

    def __init__(self, entries: Sequence[ModelEntry], device: str | None = None):
        self.entries = {e.label: e for e in entries}
        self.device = device or default_device()
        self._models: dict[str, BSRModel] = {}
        self._lock = threading.Lock()

    def get(self, label: str) -> tuple[ModelEntry, BSRModel]:
        entry = self.entries.get(label)
        if entry is None:
            raise DemoInputError(
                f"unknown model {label!r}; choose one of: {', '.join(self.entries) or 'none'}"
            )
        with self._lock:  # two first requests at once must not both load it
            if label not in self._models:
                from ..models.modeling import BSRModel

                model = BSRModel.from_pretrained(entry.folder, map_location=self.device)
                # map_location only places the loaded tensors; load_state_dict copies them into the
                # parameters where they are (the CPU), so the module itself must be moved.
                self._models[label] = model.to(self.device)
            return entry, self._models[label]


# ---------------------------------------------------------------------------------------------- one request


def open_upload(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open an uploaded file as a decoded PIL image, or raise DemoInputError saying why not.

    The size is checked from the header, before any pixel is decoded. Pillow's decompression-bomb guard
    (Image.MAX_IMAGE_PIXELS) is left as it is: it also stops files that lie about their size to the header check.
    """
    from ..core.images import ImageReadError, open_image

    try:
        return open_image(path, max_pixels=max_pixels)
    except ImageReadError as err:
        if err.reason == "too_large":
            width, height = err.size
            message = (f"The image is {width}x{height} = {width * height / 1e6:.1f} megapixels; this demo accepts up "
                       f"to {max_pixels / 1e6:g} megapixels. Crop or shrink it, or use `bsr-hub upscale` on your own "
                       "machine.")
        elif err.reason == "not_an_image":
            message = "That file is not an image Pillow can read (PNG, JPEG, WebP, TIFF, BMP, ...)."
        elif err.reason == "bomb":
            message = f"Refused: the image is too large to decode safely ({err})."
        elif err.reason == "corrupt":  # the header was fine, the pixels were not
            message = f"The image could not be decoded (truncated or corrupt?): {err}"
        else:
            message = f"The file could not be read as an image: {err}"
        raise DemoInputError(message) from None


ONE_PASS = "one pass"
TILE_CHOICES = ["auto", ONE_PASS, "128", "256", "512", "1024"]


def parse_tile(tile: Any) -> int | str:
    """The tile setting in the words of `upscale(tile=...)` and `bsr-hub upscale --tile`: "auto" (or empty) is
    the automatic choice (the whole image, or cache-sized tiles where those are faster), so the demo gives
    exactly what `model.upscale(img)` gives; 0 or "one pass" is the whole image at once; n > 0 is tiles of n
    input pixels."""
    if tile is None or (isinstance(tile, str) and tile.strip().lower() in ("", "auto")):
        return "auto"
    if isinstance(tile, str) and tile.strip().lower() == ONE_PASS:
        return 0
    try:
        value = float(tile)
    except (TypeError, ValueError):
        raise DemoInputError(f'tile size must be "auto", "one pass" or a whole number of pixels, got {tile!r}') from None
    if value < 0 or value != int(value):
        raise DemoInputError(f'tile size must be "auto", 0 (one pass) or a positive whole number, got {tile!r}')
    return int(value)


def display_copy(img: Image.Image) -> Image.Image:
    """An 8-bit copy for the browser's comparison slider (16-bit and exotic modes are not displayable)."""
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img).astype(np.float64) / 65535.0
        return Image.fromarray(np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return img.convert("RGBA" if "transparency" in img.info else "RGB")


@dataclass
class UpscaleResult:
    image: Image.Image
    """Exactly `model.upscale(upload)`: what is downloaded as a lossless PNG."""
    bicubic: Image.Image
    """The input enlarged with Pillow's bicubic to the same size, for the comparison slider."""
    info: str
    seconds: float = field(default=0.0)


def upscale_upload(
    cache: ModelCache,
    path: str | os.PathLike,
    label: str,
    *,
    self_ensemble: bool = False,
    tile: Any = "auto",
    max_pixels: int = int(DEFAULT_MAX_MEGAPIXELS * 1_000_000),
) -> UpscaleResult:
    """One demo request, without gradio: validate, upscale, and describe what was done."""
    tile_px = parse_tile(tile)
    entry, model = cache.get(label)
    with open_upload(path, max_pixels) as img:
        start = time.perf_counter()
        try:
            result = model.upscale(img, tile=tile_px, self_ensemble=bool(self_ensemble))
        except ValueError as err:  # a mode or value the network cannot take; the message says which
            raise DemoInputError(f"This image cannot be upscaled: {err}") from None
        seconds = time.perf_counter() - start
        shown = display_copy(
            ImageOps.exif_transpose(img)
        )  # upscale applies EXIF rotation; so must the preview
    bicubic = shown.resize(result.size, Image.Resampling.BICUBIC)
    tiles = {"auto": "", 0: ", in one pass"}.get(tile_px, f", tiles of {tile_px} px")
    info = (
        f"**{entry.name}** ({entry.source}) · preset `{entry.preset}` · {model.num_parameters():,} parameters · "
        f"{img.width}x{img.height} → {result.width}x{result.height} in {seconds:.2f} s on {model.device.type}"
        f"{' with self-ensemble' if self_ensemble else ''}{tiles} · "
        f"benchmark: {entry.benchmark}"
    )
    return UpscaleResult(result, bicubic, info, seconds)


# ---------------------------------------------------------------------------------------------- the detail view


def most_structured_point(img: Image.Image, region: int = DETAIL_INPUT_PX) -> tuple[float, float]:
    """The centre of the `region` x `region` window with the highest PIC (the paper's measure of structure,
    `bsr_hub.data.pic`), as fractions (x, y) of the width and height. An image too small to measure gives its centre."""
    import numpy as np
    import torch

    from ..data.pic import dense_pic

    rgb = np.array(display_copy(img).convert("RGB"))  # (H, W, 3) uint8, a writable copy for torch
    h, w = rgb.shape[:2]
    side = min(region, h, w)
    if side < 3:
        return 0.5, 0.5
    stride = max(1, side // 8)  # a few pixels off the best window is invisible; a whole-image scan is not
    scores = dense_pic(torch.from_numpy(rgb).permute(2, 0, 1), side, stride=stride)  # (ny, nx)
    iy, ix = divmod(int(scores.argmax()), scores.shape[1])
    return (ix * stride + side / 2) / w, (iy * stride + side / 2) / h


def detail_views(
    upload: Image.Image, result: Image.Image, x: float, y: float, region: int = DETAIL_INPUT_PX
) -> tuple[Image.Image, Image.Image]:
    """Bicubic and BSR over the same region, centred at fractions (x, y) of the image and clamped inside it,
    each enlarged with nearest-neighbour pixels. `upload` is the input, `result` the model's output."""
    shown, out = display_copy(upload).convert("RGB"), display_copy(result).convert("RGB")
    scale = out.width // max(shown.width, 1)
    if scale < 1 or out.size != (shown.width * scale, shown.height * scale):
        raise ValueError(f"a {out.width}x{out.height} result is not this {shown.width}x{shown.height} upload upscaled")
    side = min(region, shown.width, shown.height) * scale  # in output pixels
    left = min(max(round(x * out.width - side / 2), 0), out.width - side)
    top = min(max(round(y * out.height - side / 2), 0), out.height - side)
    box = (left, top, left + side, top + side)
    bicubic = shown.resize(out.size, Image.Resampling.BICUBIC).crop(box)
    zoom = max(1, round(DETAIL_DISPLAY_PX / side))
    enlarge = (side * zoom, side * zoom)
    return (
        bicubic.resize(enlarge, Image.Resampling.NEAREST),
        out.crop(box).resize(enlarge, Image.Resampling.NEAREST),
    )


# ---------------------------------------------------------------------------------------------- the Gradio app


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


def require_gradio() -> Any:
    """Import gradio with analytics off (it would otherwise call home), or say which extra installs it."""
    from ..core.extras import require

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
    from ..core.examples import example_images

    settings = settings or DemoSettings.from_env()
    entries = discover_models(settings.models) if entries is None else list(entries)
    cache = ModelCache(entries)
    # With no model the radio still has one (hidden) value, so an API call with only the image reaches
    # `upscale` and gets the "no trained model" message instead of "missing argument".
    labels = [e.label for e in entries] or [NO_MODEL_CHOICE]

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

    def clear_result() -> tuple[None, None, str, None, None]:
        """A new upload empties the previous result and its details: shown beside the new image's bicubic, they
        would pass for its own."""
        return None, None, "", None, None

    with gr.Blocks(title="BSR super-resolution", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
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
        with gr.Row():
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
                    value=labels[0],
                    label="Scale and model",
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
        gr.Examples(
            examples=[[str(p)] for p in example_images()],
            inputs=[image],
            label="Example photos (CC0 / public domain, shipped with bsr_hub)",
            cache_examples=False,
        )
        button.click(
            upscale,
            inputs=[image, model_choice, self_ensemble, tile],
            outputs=[output, slider, info],
            api_name=API_NAME,
            preprocess=False,
            concurrency_limit=settings.concurrency,
        ).success(
            locate_detail,
            inputs=[image, output],
            outputs=[detail_x, detail_y, detail_bicubic, detail_bsr],
            api_visibility="private",
        )
        image.change(clear_result, outputs=[output, slider, info, detail_bicubic, detail_bsr],
                     api_visibility="private", queue=False)
        for moved in (detail_x, detail_y):
            moved.release(
                detail,
                inputs=[image, output, detail_x, detail_y],
                outputs=[detail_bicubic, detail_bsr],
                api_visibility="private",
            )
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    demo.bsr_settings = settings  # serve() reads the upload limit from here
    return demo


def serve(
    demo: gr.Blocks, server_name: str | None = None, server_port: int | None = None, **launch_kwargs: Any
) -> Any:
    """Launch `demo`. Host and port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (what Spaces sets),
    else 127.0.0.1 and the first free port from 7860."""
    settings = getattr(demo, "bsr_settings", DemoSettings())
    launch_kwargs.setdefault("max_file_size", settings.max_file_size)
    launch_kwargs.setdefault("ssr_mode", False)  # no Node.js server: one process, nothing else to install
    return demo.launch(server_name=server_name, server_port=server_port, **launch_kwargs)
