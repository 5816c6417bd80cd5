"""What the installed OpenCV's dnn_superres and dnn can load and run: a TensorFlow GraphDef (.pb), a bsr-hub export,
and nearest-neighbour graphs in dnn_superres' own conventions. Prints one line per check (the evidence behind
bsr_hub/inference/runtimes.py's docstring and bench/results/leaderboard.md).

    python bench/opencv_probe.py                       # with opencv-python-headless: no dnn_superres, says so
    PYTHONPATH=/tmp/contrib python bench/opencv_probe.py    # with opencv-contrib-python-headless installed there
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from onnx_graphs import nearest_graph

from bsr_hub import BSRConfig, BSRModel
from bsr_hub.inference import ClampedBSR
from bsr_hub.models.export import export_onnx


def reason(err: Exception) -> str:
    return str(err).strip().splitlines()[-1]


def main() -> None:
    print(f"cv2 {cv2.__version__} from {cv2.__file__}; cv2.dnn_superres: {hasattr(cv2, 'dnn_superres')}")
    folder = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model = BSRModel(BSRConfig(scale=2, num_features=8, num_groups=2, num_blocks=1, attention_kernel_size=3)).eval()
    export = export_onnx(model, folder / "tiny.onnx").onnx_path
    node = b"\n\x01x" + b"\x12\x0bPlaceholder"  # NodeDef {name: "x", op: "Placeholder"}
    (folder / "graph.pb").write_bytes(b"\n" + bytes([len(node)]) + node)  # a TensorFlow GraphDef
    x = torch.rand(1, 3, 20, 24)
    net = cv2.dnn.readNet(str(export))
    net.setInput(x.numpy())
    with torch.no_grad():
        want = ClampedBSR(model)(x)
    print(f"cv2.dnn.readNet(bsr-hub export) before any DnnSuperResImpl: 20x24 -> {net.forward().shape}, "
          f"max |diff| to PyTorch {np.abs(net.forward() - want.numpy()).max():.2g}")
    if not hasattr(cv2, "dnn_superres"):
        print("no cv2.dnn_superres in this OpenCV (it comes with opencv-contrib-python-headless)")
        return
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    for path in (folder / "graph.pb", export):
        try:
            sr.readModel(str(path))
            print(f"DnnSuperResImpl.readModel({path.name}): loaded")
        except cv2.error as err:
            print(f"DnnSuperResImpl.readModel({path.name}): {reason(err)}")
    img = np.ascontiguousarray((x[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
    for algorithm in ("edsr", "espcn", "fsrcnn", "lapsrn"):
        sr.setModel(algorithm, 2)
        try:
            print(f"upsample(bsr-hub export) as {algorithm}: 20x24x3 -> {sr.upsample(img).shape}")
        except cv2.error as err:
            print(f"upsample(bsr-hub export) as {algorithm}: {reason(err)}")
    net = cv2.dnn.readNet(str(export))  # read after a DnnSuperResImpl exists: its DepthToSpace replaces OpenCV's
    net.setInput(x.numpy())
    print(f"cv2.dnn.readNet(bsr-hub export) after DnnSuperResImpl_create: 20x24 -> {net.forward().shape}")
    q = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    for algorithm, nhwc, image in (("edsr", False, q), ("espcn", True, q[:, :1].expand(1, 3, 20, 24))):
        sr.readModel(str(nearest_graph(folder / f"{algorithm}.onnx", 2, nhwc=nhwc)))
        sr.setModel(algorithm, 2)
        bgr = np.ascontiguousarray((image[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
        out = torch.from_numpy(sr.upsample(bgr)[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
        levels = ((out - F.interpolate(image, scale_factor=2, mode="nearest")).abs().max() * 255).item()
        print(f"nearest-neighbour ONNX graph in the {algorithm} convention ({'grey ' if nhwc else ''}input): "
              f"{out.shape[-1]}x{out.shape[-2]}, max |diff| to nearest neighbour {levels:.2g} grey levels")


if __name__ == "__main__":
    main()
