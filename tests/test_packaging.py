"""The core install: `import bsr_hub` and the Hub round trip work without the train/demo extras."""

import subprocess
import sys


def test_core_import_and_save_need_no_optional_dependency(tmp_path):
    # sys.modules[name] = None makes `import name` fail, as if the package were not installed.
    code = (
        "import sys\n"
        "for name in ('accelerate', 'datasets', 'gradio', 'matplotlib'):\n"
        "    sys.modules[name] = None\n"
        "from bsr_hub import BSRConfig, BSRModel\n"
        "import bsr_hub.commands.main, bsr_hub.inference.api\n"
        "from PIL import Image\n"
        "model = BSRModel(BSRConfig(num_features=4, num_groups=1, num_blocks=1))\n"
        "model.save_pretrained(sys.argv[1])\n"
        "out = BSRModel.from_pretrained(sys.argv[1]).upscale(Image.new('RGB', (5, 4)))\n"
        "assert out.size == (10, 8)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr


def test_missing_extra_is_named_in_the_error(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['gradio'] = None\n"
        "from bsr_hub.commands.main import main\n"
        "sys.exit(main(['demo', '--model', sys.argv[1]]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0
    assert "bsr-hub[demo]" in run.stderr + run.stdout
