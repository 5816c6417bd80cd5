"""Image in, image out: `upscale` for PIL images, numpy arrays and torch tensors, with seamless tiling.

The network sees (B, 3, h, w) float RGB in [0, 1]; convert.py turns what a user hands us into that and back.
How the network is run is decided by default from measurements (bench/results/fast_path.md): `plan_tiling`
(tiling.py) picks the whole image or tiles, and `backend` (backends.py) picks eager PyTorch, a
frozen TorchScript graph, torch.compile or ONNX Runtime. This module puts them together for one image or many.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core import (
    cpu,
    read_png_16bit,  # noqa: F401 (re-exported)
)
from .autotune import choice_for
from .backends import BACKENDS, get_runner, resolve_backend
from .convert import _network_input, _Output, _prepare
from .protocol import Upscaler
from .tiling import (
    AUTO,
    BORDER_CONTEXT,
    DEFAULT_TILE_OVERLAP,
    MIN_TILE,
    TileSetting,
    Tiling,
    _run_tiled,
    _warn_if_one_pass_is_too_large,
    release_cached_memory,
    resolve_tiling,
)


def ensemble_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Self-ensemble ("+"): the mean over the 8 flips/rotations, each undone on the output, in float32.

    The sum is float32 whatever the model's dtype: a half-precision model's outputs summed in half precision
    would round at each addition (bf16 keeps 8 bits), while 8 of them add up exactly in float32."""
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for k in range(8):
        t = x.flip(-1) if k >= 4 else x
        y = model(torch.rot90(t, k % 4, dims=(-2, -1)))
        y = torch.rot90(y, -(k % 4), dims=(-2, -1)).float()
        total = total + (y.flip(-1) if k >= 4 else y)
    return total / 8


def check_precision(model: Upscaler) -> None:
    """Half precision on the CPU: bf16 runs where the CPU computes it natively (AVX-512 BF16 or AMX, read from its
    flags at run time: `core.cpu.has_native_bf16`); fp16, and bf16 on any other CPU, is a ValueError that says why."""
    if model.device.type != "cpu" or model.dtype not in (torch.float16, torch.bfloat16):
        return
    if model.dtype == torch.bfloat16:
        if cpu.has_native_bf16():
            return
        raise ValueError(
            f"the model is in torch.bfloat16 on the CPU, and this CPU ({cpu.describe_cpu()}) has no native bf16 "
            f"({' or '.join(cpu.NATIVE_BF16_FLAGS)}): its bf16 convolutions run 10 to 200 times slower than float32; "
            "use model.float() here, or bf16 on a CPU with avx512_bf16 or on a GPU"
        )
    raise ValueError(
        f"the model is in {model.dtype} on the CPU, where half-precision convolutions are unsupported or "
        "10 to 200 times slower; use model.float() on the CPU (or bfloat16 on a CPU with avx512_bf16), or move the "
        "model to a GPU for fp16/bf16"
    )


@dataclass(frozen=True)
class RunPlan:
    """How one call runs the network: its tiling, the backend (resolved, never "auto"), the mirrored border, and the
    layout (`memory_format`). `channels_last` is the caller's or the measured choice's; None leaves the fixed rule."""

    tiling: Tiling
    backend: str
    context: int
    channels_last: bool | None
    device_type: str
    dtype: torch.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the convolutions compute in: the model's dtype, or bf16 under backend="eager-bf16"'s autocast."""
        return torch.bfloat16 if self.backend == "eager-bf16" else self.dtype

    def memory_format(self, whole: bool) -> torch.memory_format:
        # Without a measurement: channels_last feeds CUDA's tensor cores and the CPU's native bf16 kernels (oneDNN's
        # bf16 convolutions are blocked for it); on AVX2 CPUs it was faster on tiles in every run of
        # bench/fast_path.py, while whole images measured within noise (NCHW 7 % faster in
        # bench/results/inference.md), so fp32 on the CPU without a measurement uses it for tiles only.
        use = self.channels_last
        if use is None:
            use = self.device_type == "cuda" or torch.bfloat16 in (self.dtype, self.compute_dtype) or not whole
        return torch.channels_last if use else torch.contiguous_format


def plan_run(model: Upscaler, x_shape: Sequence[int], *, tile: int | str | None = AUTO,
             tile_overlap: int = DEFAULT_TILE_OVERLAP, channels_last: bool | None = None,
             backend: str = AUTO) -> RunPlan:
    """The RunPlan for a (B, 3, h, w) input. On the CPU, `backend="auto"` is measured on this machine once per model
    and set of passes, each backend on its own tiling's (autotune.choice_for), and fixed from then on; where it is
    not (a named backend, a GPU, a small input, BSR_HUB_AUTOTUNE=0) the fixed rules of backends.resolve_backend and
    `RunPlan.memory_format` hold."""
    context = getattr(model, "border_context", BORDER_CONTEXT)  # 0 for a graph that mirrors its own (protocol.py)

    def tiling_for(name: str) -> Tiling:  # each backend has its own tiling (ONNX Runtime's tiles are larger)
        return resolve_tiling(tile, tile_overlap, model, x_shape, name)

    tuned = choice_for(model, backend, channels_last, x_shape, context, tiling_for, planned=tile == AUTO)
    if tuned is not None:
        backend, channels_last = tuned.backend, channels_last if channels_last is not None else tuned.channels_last
    else:
        backend = resolve_backend(model, backend, pixels=x_shape[0] * x_shape[-2] * x_shape[-1])
    tiling = tiling_for(backend) if model.device.type == "cpu" else resolve_tiling(tile, tile_overlap, model, x_shape)
    return RunPlan(tiling, backend, context, channels_last, model.device.type, model.dtype)


def super_resolve(
    model: Upscaler,
    x: torch.Tensor,
    *,
    tile: int | str | None = AUTO,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
    backend: str = AUTO,
) -> torch.Tensor:
    """The network on a (B, 3, h, w) float RGB batch in [0, 1] -> (B, 3, sh, sw) float32, clamped, on x's device.

    Runs on the model's device and dtype; `tile` and `backend` as in `upscale`. On an out-of-memory error the
    tile is halved and the image retried (down to MIN_TILE), with a warning, instead of failing.
    """
    b, _, h, w = x.shape
    out = torch.empty(b, 3, h * model.scale, w * model.scale, device=x.device)

    def keep(row: int, band: torch.Tensor) -> None:
        out[:, :, row : row + band.shape[-2]] = band

    super_resolve_bands(model, x, keep, tile=tile, tile_overlap=tile_overlap, self_ensemble=self_ensemble,
                        channels_last=channels_last, backend=backend)
    return out


def super_resolve_bands(
    model: Upscaler,
    x: torch.Tensor,
    emit: Callable[[int, torch.Tensor], None],
    *,
    tile: int | str | None = AUTO,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
    backend: str = AUTO,
) -> None:
    """`super_resolve` without the output-sized float buffer: the result goes to `emit(row, band)` band by band from
    the top, each (B, 3, n, sw) float, clamped, on x's device, emit's to spend until it returns. After an
    out-of-memory retry the bands start again from row 0, so a writer that places them by row ends up with the
    retry's result."""
    check_precision(model)
    device, dtype = model.device, model.dtype
    plan = plan_run(model, x.shape, tile=tile, tile_overlap=tile_overlap, channels_last=channels_last, backend=backend)
    tiling, backend, context = plan.tiling, plan.backend, plan.context

    runners: dict[torch.memory_format, Callable] = {}  # looked up once per call, not once per tile

    def forward(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        if memory_format not in runners:
            runners[memory_format] = get_runner(model, backend, memory_format)
        runner = runners[memory_format]
        t = t.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
        y = ensemble_forward(runner, t) if self_ensemble else runner(t)
        return y.float()

    if tiling.whole and device.type == "cpu" and tile != AUTO:
        _warn_if_one_pass_is_too_large(model, x.shape)
    size = tiling.size
    while True:
        try:
            with torch.no_grad():
                # An out-of-memory retry tiles too, so it takes the tiles' layout: the same result as asking for it.
                run = functools.partial(forward, memory_format=plan.memory_format(whole=size is None))
                _run_tiled(run, x, model.scale, size, tiling.overlap, lambda row, band: emit(row, band.clamp_(0, 1)),
                           context=context)
                return
        except torch.cuda.OutOfMemoryError:
            # Only decide here: the exception in hand keeps the failed pass's frames, and their tensors, alive.
            smaller = (size or max(x.shape[-2:])) // 2
            if smaller < max(MIN_TILE, tiling.overlap + 1):
                raise
        # Past the except block the exception and its frames are gone: what they held can go back to the device.
        release_cached_memory(device)
        warnings.warn(f"out of memory at tile={size}; retrying with tile={smaller}", stacklevel=2)
        size = smaller


def _check_options(tile: Any, tile_overlap: Any, backend: Any) -> None:
    TileSetting(tile, tile_overlap)
    if backend != AUTO and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; got {backend!r}")


def upscale(
    model: Upscaler,
    image: Any,
    *,
    tile: int | str | None = AUTO,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
    backend: str = AUTO,
) -> Any:
    """Super-resolve an image by the model's scale; returns the same kind of object.

    Args:
        image: a PIL image (RGB, L, RGBA, LA, P, I;16, I, CMYK, ...; EXIF orientation applied), a numpy array
            (HxW or HxWxC with C = 1..4; uint8, uint16, or float in [0, 1]) or a torch tensor (BxCxHxW or CxHxW,
            float in [0, 1]). Grey stays grey; an alpha channel is upscaled with bicubic, separately.
        tile: "auto" (default): chosen from the image size, the model's width, the device and the backend
            (`plan_tiling`): on the CPU, tiles for large images (sized for the caches in PyTorch, for memory in
            ONNX Runtime), the whole image for small ones; on a GPU, the whole image unless it would not fit. None or 0: one pass over the whole image, always. n > 0: tiles of
            n x n LR pixels (a tile at the image's border also gets BORDER_CONTEXT mirrored pixels beyond it):
            the tile bounds the network's memory, and the result is assembled band by band in its own sample type,
            so what grows with the image is the input, the output and little else (bench/results/tiling_memory.md).
            Tiled output is within one 8-bit grey level of one pass.
        tile_overlap: LR pixels shared by neighbouring tiles, cross-faded so there are no seams.
        self_ensemble: average the 8 flips/rotations (the "+" results in papers; 8x slower).
        channels_last: use the channels_last memory format (None: the measured layout on the CPU where
            `backend="auto"` measured; otherwise on CUDA, for bf16, and on the CPU for tiles).
        backend: "auto" (default: on the CPU the fastest measured, which on a CPU with native bf16 may be
            "eager-bf16", within 0.01 dB of float32 on Set5 and Set14, bench/results/bf16_cost.md; unmeasured,
            `CPU_BACKEND_PREFERENCE`; elsewhere eager),
            or one of BACKENDS. A backend other than eager is built once per model (and, for "compile", once per
            input shape) and reused while the weights do not change.
    """
    _check_options(tile, tile_overlap, backend)
    x, spec = _prepare(image)
    output = _Output(spec, x, model.scale, counts=[x.shape[0]])
    super_resolve_bands(
        model, _network_input(x, spec), output.write, tile=tile, tile_overlap=tile_overlap,
        self_ensemble=self_ensemble, channels_last=channels_last, backend=backend,
    )
    return output.finished()[0]


def upscale_many(model: Upscaler, images: Sequence[Any], *, batch_size: int = 1, **options: Any) -> list[Any]:
    """`upscale` for a list of images; up to `batch_size` consecutive images of the same size and kind go through
    the network as one batch. Returns the results in order; each equals `upscale(model, image, **options)` to
    within float rounding. A bad image raises, as in `upscale`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_options(options.get("tile", AUTO), options.get("tile_overlap", DEFAULT_TILE_OVERLAP),
                   options.get("backend", AUTO))
    prepared = [_prepare(image) for image in images]
    results: list[Any] = [None] * len(prepared)
    i = 0
    while i < len(prepared):
        x0, spec0 = prepared[i]
        j = i + 1
        while (j < len(prepared) and j - i < batch_size and x0.shape[0] == 1
               and prepared[j][0].shape == x0.shape and prepared[j][1] == spec0):
            j += 1
        xs = torch.cat([x for x, _ in prepared[i:j]]) if j - i > 1 else x0  # (n, C, H, W)
        output = _Output(spec0, xs, model.scale, counts=[x.shape[0] for x, _ in prepared[i:j]])
        super_resolve_bands(model, _network_input(xs, spec0), output.write, **options)
        results[i:j] = output.finished()
        i = j
    return results
