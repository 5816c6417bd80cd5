"""The demo layer: the Gradio app (`app`; its settings, models, requests and page in `settings`, `models`,
`upscaling`, `page`) and its export as a Hugging Face Space (`space`). Gradio is imported only when a demo
is built."""

from .app import build_demo, serve
from .settings import DemoSettings
from .space import export_space

__all__ = [
    "DemoSettings",
    "build_demo",
    "export_space",
    "serve",
]
