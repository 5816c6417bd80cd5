"""Score a model on SR benchmarks under the published protocol (PSNR / SSIM on Y, MATLAB-exact LR).

    python evaluate.py --model NAME_OR_PATH_OR_REPO|bicubic|FILE.onnx|opencv:FILE|dnn_superres:ALGO:FILE \\
        --benchmarks Set5 Set14 BSD100 --data-dir ../shared/data/benchmarks --scale 2 [--degradation BI|BD] \\
        [--self-ensemble] [--tile N] [--save-images DIR] [--output results.json] [--update-card MODEL_DIR]
    python evaluate.py --model MODEL MODEL ... --leaderboard DIR ...   # one table and one plot of them all

Works under `accelerate launch evaluate.py ...` too (images split across processes, then gathered).
The same command as `bsr-hub eval`: its flags live in `bsr_hub.commands.eval`, the scoring in `bsr_hub.evaluation.protocol`.
"""

import sys

from bsr_hub.commands.eval import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
