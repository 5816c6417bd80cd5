"""The package's version, in the lowest layer so that any module (the ONNX sidecar, the Space export) can record it."""

__version__ = "0.1.0"
