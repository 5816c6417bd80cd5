"""bench/results/gpu.md from what the calls of a lease measured so far (gpu_run.load_all()): written to $OUT after
every stage of every call, so that the report that comes back holds whatever was done."""

from __future__ import annotations


def _num(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


CALLS = ("call1", "call2", "call3")


def render(results: dict) -> str:
    env, tests, thr, inf, tr = (results.get(n) for n in ("environment", "tests", "throughput", "inference", "train"))
    lines = ["# GPU: CUDA tests, throughput, and bsr-base x2 trained in one lease", ""]
    rehearsal = env is not None and env.get("device") == "cpu"
    if env is None and not any(f"stages_{c}" in results for c in CALLS):
        lines += ["**Not yet run.** This file is written by `bench/gpu.py` on a GPU; bench/GPU.md gives the calls.", ""]
    elif rehearsal:
        lines += ["**CPU rehearsal (`python bench/gpu_rehearse.py`), not GPU figures**: the calls end to end on a",
                  "tiny budget; the CUDA tests skip and bf16 is not measured. The GPU run replaces this file.", ""]
    lines += ["Calls, one `run` each on the GPU machine (bench/GPU.md): `python3 bench/gpu.py call1`, "
              "`python3 bench/gpu.py call2`, optionally `python3 bench/gpu_zoo.py call3`.", ""]
    stage_rows = [(c, s) for c in CALLS for s in results.get(f"stages_{c}", {}).get("stages", [])]
    if stage_rows:
        lines += ["## Stages", "", "Written as each stage starts and ends: a call killed at its limit shows the stage "
                  "it was in as `running`.", ""]
        for c in CALLS:
            if f"window_{c}" in results:
                lines.append(f"- {results[f'window_{c}']['window']}")
        lines += ["", "| call | stage | started | status | s | note |", "|---|---|---|---|---|---|"]
        for c, s in stage_rows:
            note = s.get("why") or s.get("error", "")
            lines.append(f"| {c} | {s['stage']} | {s.get('started', '')} | {s['status']} | {s.get('seconds', '')} | "
                         f"{note.replace('|', '/').replace(chr(10), ' ')[:300]} |")
        lines += [""]
    for c in CALLS:
        pre = results.get(f"preflight_{c}")
        if pre:
            lines.append(f"- {c} preflight: plan {pre['plan']}, checked in {pre['check_s']} s, parts needed "
                         f"{pre['parts_needed']}, unpacked now {pre['unpacked_now']}, {pre['train_tiles']} training "
                         f"tiles on the machine; {pre.get('import', 'import not checked')}")
    if any(results.get(f"preflight_{c}") for c in CALLS):
        lines += [""]
    if env:
        lines += ["## Machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()] + [""]
    if tests:
        lines += ["## CUDA tests", "", f"`{tests['command']}`: **{tests['summary']}** ({tests['seconds']} s)", ""]
        if not rehearsal and "skipped" in tests["summary"]:  # a skipped test cannot fail: say so, loudly
            lines += ["**A CUDA test skipped on the GPU**: what it checks was not checked (its reason below).", ""]
        lines += [f"- {r}" for r in tests["results"]] + [""]
    if thr:
        lines += ["## Training throughput (the training step alone)", "",
                  "Forward, hybrid loss, backward and Adam on x2 batches already on the device (samples/s; "
                  "data loading is measured by the training run below); cuDNN autotuning "
                  f"{'on' if thr.get('cudnn_benchmark') else 'off'}, as train.py runs the recipe.", "",
                  "| preset | precision | layout | batch | LR patch | samples/s |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['preset']} | {g['precision']} | {g['layout']} | {g['batch']} | {g['patch']} | "
                  f"{g['samples_per_s']:.0f} |" for g in thr["grid"]] + [""]
        if thr.get("skipped"):
            lines += [f"Not timed (the call's window was running out): {', '.join(thr['skipped'])}.", ""]
    if inf:
        lines += ["## Inference", "", "x2, one LR image of side `LR side` (output twice that), channels_last, "
                  "mean of the timed runs after one warm-up.", "",
                  "| preset | dtype | LR side | output MP/s | conv TFLOP/s | conv GFLOP per image |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['dtype']} | {r['lr_side']} | {r['mp_per_s']:.1f} | "
                  f"{r['conv_tflop_per_s']:.1f} | {r['gflop']:.0f} |" for r in inf["rows"]]
        lines += ["", "The practical ceiling, timed in the same run: a plain 3x3 convolution, 64 -> 64 channels:", ""]
        lines += [f"- {c['dtype']}, input {c['shape']}: **{c['tflop_per_s']:.1f} TFLOP/s**" for c in inf["ceiling"]]
        lines += [""]
    plan = results.get("train_plan")
    if plan and not tr:
        lines += ["## bsr-base x2", "", f"Started: max_steps {plan['max_steps']} ({plan['why']}), training deadline "
                  f"{plan['train_s']:.0f} s; no result yet (see Stages).", ""]
    if tr:
        lines += ["## bsr-base x2, trained in the minutes left", "",
                  f"`{tr['command']}` (max_steps: {tr.get('max_steps_rule', '')})", ""]
        if tr.get("finish_command"):
            lines += [f"Stopped at the deadline and ended at the step reached with `{tr['finish_command']}`.", ""]
        lines += ["| | |", "|---|---|", f"| return code | {tr['returncode']} |", f"| steps | {tr['steps']} |",
                  f"| wall time (s, start-up and evaluation included) | {tr['seconds']} |",
                  "| samples/s (median of the logged intervals, data loading included) | "
                  f"{_num(tr['samples_per_s_median'], 0)} |",
                  f"| last validation PSNR, Set5 (dB) | {_num(tr['val_psnr_last'], 2)} |"]
        packed = results.get("pack")
        if packed:
            lines += [f"| returned as | `{packed['file']}`, {packed['mib']} MiB, weights {packed['weights']} |"]
        lines += [""]
        for r in tr.get("device_eval", []):
            lines.append(f"- on the device, {r['benchmark']}: {r['psnr']:.2f} dB / {r['ssim']:.4f}")
        lines += ["", "The numbers that count are measured back on the CPU with evaluate.py on what was returned "
                  "(bench/GPU.md).", ""]
    return "\n".join(lines)
