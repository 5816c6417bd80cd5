"""Small hand-written ONNX graphs for the runtime tests: nearest-neighbour enlarging, whose exact output is known
(`F.interpolate(x, scale_factor=s, mode="nearest")`), in the layouts a super-resolution file may have."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def nearest_graph(path: Path, scale: int = 2, *, shape: list | None = None, nhwc: bool = False,
                  float16: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write a graph that enlarges its input `scale` times by nearest neighbour.

    Args:
        shape: the input shape (default (1, 3, h, w) with h and w dynamic; (1, h, w, 1) with `nhwc`).
        nhwc: NHWC input (OpenCV dnn_superres' convention for espcn, fsrcnn and lapsrn), NCHW output.
        float16: a float16 input, cast to float32 inside.
        metadata: the graph's metadata_props.
    """
    shape = shape or ([1, "h", "w", 1] if nhwc else [1, 3, "h", "w"])
    nodes, x = [], "x"
    if float16:
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, float(scale), float(scale)])
    nodes.append(helper.make_node("Resize", [x, "", "scales"], ["y"], mode="nearest"))
    graph = helper.make_graph(
        nodes, "nearest",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16 if float16 else TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None, None])],
        initializer=[scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime and OpenCV this project supports
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
