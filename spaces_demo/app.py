"""The Hugging Face Space: `python app.py` serves the bsr_hub demo (locally on http://127.0.0.1:7860).

Spaces runs this file as a script and sets GRADIO_SERVER_NAME/PORT; `gradio app.py` (reload mode) imports it
and looks for `demo`. So `demo` is built at module level and only launched under `__main__`: importing this
file starts no server. All the logic lives in `bsr_hub.demo`, so `bsr-hub demo` serves the same app.

Models: every checkpoint bundled with bsr_hub, or those listed in BSR_DEMO_MODELS (comma-separated folders or
Hub repo ids). Limits: BSR_DEMO_MAX_MEGAPIXELS (default 2), BSR_DEMO_CONCURRENCY (default 1).
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no request leaves the machine

from bsr_hub.demo import build_demo, serve

demo = build_demo()

if __name__ == "__main__":
    serve(demo)
