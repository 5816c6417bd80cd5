"""Issue 27: backend="auto" on a CPU measures the backends and layouts on this machine once per model and pass shape,
runs the fastest, and remembers the table in the user's cache folder. A fake timer decides which is "fastest": these
tests check the choice and the cache, never the speed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from bsr_hub import BSRModel
from bsr_hub.commands.main import main
from bsr_hub.core import CACHE_ENV
from bsr_hub.inference import api, autotune, backends, tuning_cache
from bsr_hub.inference import tiling as tiling_module

LARGE = (1, 3, 260, 260)  # at least CPU_BUILD_MIN_PIXELS: "auto" measures
SMALL = (1, 3, 64, 64)


class FakeTimer:
    """Stands in for autotune._time_candidate: the seconds it is told for a 256x256 pass, in proportion for other
    sizes, and a record of what it was asked to time."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds, self.calls = seconds, []

    def __call__(self, model, candidate, x, warm_up=True):
        self.calls.append((candidate.name, tuple(x.shape)))
        return self.seconds.get(candidate.name, 1.0) * x.shape[-2] * x.shape[-1] / 256**2


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Tuning on, the cache file in tmp_path, nothing in this process's memory before or after."""
    monkeypatch.setenv(autotune.TUNE_ENV, "1")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "SETTLE_AFTER", {})  # fake timers: nothing spins (test_a_pause_follows_...)
    autotune.forget()
    yield tmp_path / "cache" / tuning_cache.CACHE_FILE
    autotune.forget()


def probes(model, shape, tile="auto") -> dict[str, autotune.Probe]:
    """What each candidate is timed on for an input of `shape`, as upscale computes it."""
    return autotune.plan_probes(model, shape, 8, lambda backend: api.resolve_tiling(tile, 16, model, shape, backend),
                                planned=tile == "auto")


def probe(model, x) -> tuple[int, int, int]:
    """The (B, h, w) every candidate is timed on for input x, where all of them run it in one pass."""
    (shape,) = {p.shape for p in probes(model, tuple(getattr(x, "shape", x))).values()}
    return shape


def fake(monkeypatch, **seconds) -> FakeTimer:
    timer = FakeTimer({name.replace("_cl", " channels_last").replace("_nchw", " NCHW"): s for name, s in seconds.items()})
    monkeypatch.setattr(autotune, "_time_candidate", timer)
    return timer


def runners_used(monkeypatch) -> list:
    used = []

    def spy(model, backend, memory_format):
        used.append((backend, memory_format))
        return backends.get_runner(model, backend, memory_format)

    monkeypatch.setattr(api, "get_runner", spy)
    return used


def test_auto_runs_the_fastest_measured_backend_and_layout(tiny_model, tuning, monkeypatch):
    timer = fake(monkeypatch, eager_nchw=0.5, eager_cl=0.1, jit=0.3, onnxruntime=0.14)
    used = runners_used(monkeypatch)
    x = torch.rand(*LARGE)
    out = tiny_model.upscale(x)
    assert used == [("eager", torch.channels_last)]
    names = [name for name, _ in timer.calls]
    candidates = [c.name for c in autotune.available_candidates(tiny_model)]
    contenders = [n for n in candidates if n in ("eager channels_last", "onnxruntime")]  # within 1.5x of 0.1
    assert names == candidates + contenders  # each candidate once, then the contenders once more
    shape = probe(tiny_model, x)
    assert {s for _, s in timer.calls} == {(1, 3, shape[1], shape[2])}  # on one input of the pass's own size
    assert torch.allclose(out, tiny_model.upscale(x, backend="eager"), atol=1e-5)
    tiny_model.upscale(x)
    assert len(timer.calls) == len(names)  # measured once, then fixed for the process


def test_a_pause_follows_onnx_runtime_s_pass_before_the_next_candidate_is_timed(tiny_model, tuning, monkeypatch):
    """ONNX Runtime's threads spin after a run and slow the pass timed next (bench/results/ort_spin.md): each of its
    passes is followed by a pause, the other backends' are not."""
    monkeypatch.setattr(backends, "_onnxruntime_available", lambda: True)
    monkeypatch.setattr(autotune, "_onnxruntime_available", lambda: True)
    monkeypatch.setattr(autotune, "SETTLE_AFTER", {"onnxruntime": 0.1})
    events = []
    timer = fake(monkeypatch, eager_nchw=0.5, eager_cl=0.1, jit=0.3, onnxruntime=0.12)
    monkeypatch.setattr(autotune, "_time_candidate", lambda *a, **k: events.append(a[1].name) or timer(*a, **k))
    monkeypatch.setattr(autotune.time, "sleep", lambda s: events.append(s) if s else None)
    tiny_model.upscale(torch.rand(*LARGE))
    after = [events[i + 1] for i, e in enumerate(events) if e == "onnxruntime"]
    assert after == [0.1, 0.1]  # its first pass and its second (a contender)
    assert [e for e in events if isinstance(e, float)] == [0.1, 0.1]


def test_each_candidate_is_timed_on_a_pass_of_its_own_tiling(tiny_model, tuning, monkeypatch):
    """A whole image is timed on a square of its pixels, a tiled one on its tile, each backend on its own tiling
    (ONNX Runtime's tiles are larger than PyTorch's): each is timed on what it would run."""
    timer = fake(monkeypatch)
    tiny_model.upscale(torch.rand(1, 3, 300, 280))  # runs whole: 316x296 with the border, 306 px a side on average
    assert {shape for _, shape in timer.calls} == {(1, 3, 320, 320)}
    timer.calls.clear()
    shape = (1, 3, 1000, 700)
    tiny_model.upscale(torch.rand(*shape))
    tiles = {b: api.resolve_tiling("auto", 16, tiny_model, shape, b).size for b in ("eager", "jit", "onnxruntime")}
    assert tiles == {"eager": 187, "jit": 187, "onnxruntime": 362}
    expected = {"eager": (1, 3, 192, 192), "jit": (1, 3, 192, 192), "onnxruntime": (1, 3, 384, 384),
                "eager-bf16": (1, 3, 192, 192)}
    assert {(name, s) for name, s in timer.calls} == {(c.name, expected[c.backend])
                                                     for c in autotune.available_candidates(tiny_model)}


def test_probes_of_nearby_sizes_are_shared():
    """Sides rounded up to 32 up to 256, 64 up to 512, 128 beyond: a dozen probes for every size of photo."""
    assert [autotune.probe_side(n * n) for n in (100, 128, 129, 257, 300, 513, 1000)] == [128, 128, 160, 320, 320,
                                                                                         640, 1024]
    assert autotune.probe_side(400 * 100) == 224  # a strip is timed on a square of its pixels
    sides = {autotune.probe_side(h * w) for h in range(64, 1025, 7) for w in range(64, 1025, 7)}
    assert len(sides) <= 20


def test_the_table_is_cached_for_a_later_process(tiny_model, tuning, monkeypatch):
    fake(monkeypatch, eager_cl=0.1)
    tiny_model.upscale(torch.rand(*LARGE))
    stored = json.loads(tuning.read_text())
    (entry,) = stored["entries"].values()
    assert set(entry["seconds"]) == {c.name for c in autotune.available_candidates(tiny_model)}
    assert entry["key"]["threads"] == torch.get_num_threads()
    assert set(map(tuple, entry["key"]["probes"].values())) == {probe(tiny_model, LARGE)}
    autotune.forget()  # a new process: nothing in memory
    later = fake(monkeypatch, onnxruntime=0.01, jit_nchw=0.01)  # would choose otherwise if it measured
    used = runners_used(monkeypatch)
    tiny_model.upscale(torch.rand(*LARGE))
    assert later.calls == [] and used == [("eager", torch.channels_last)]


def test_another_model_shape_thread_count_or_version_measures_again(tiny_model, tuning, monkeypatch):
    timer = fake(monkeypatch)
    tiny_model.upscale(torch.rand(*LARGE))
    per_measurement = len(timer.calls)
    BSRModel(tiny_config(num_features=12)).upscale(torch.rand(*LARGE))  # another architecture
    tiny_model.upscale(torch.rand(1, 3, 600, 560))  # tiled: another probe shape
    assert len(timer.calls) == 3 * per_measurement
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        tiny_model.upscale(torch.rand(*LARGE))
    finally:
        torch.set_num_threads(threads)
    assert len(timer.calls) == 4 * per_measurement
    monkeypatch.setattr(tuning_cache, "__version__", "99.0")
    tiny_model.upscale(torch.rand(*LARGE))
    assert len(timer.calls) == 5 * per_measurement
    tiny_model.upscale(torch.rand(*LARGE))  # the same key as the last: nothing new
    assert len(timer.calls) == 5 * per_measurement
    assert len(json.loads(tuning.read_text())["entries"]) == 5


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "entries": []}', "\x00\xff",
                                     '{"version": 2, "entries": {"KEY": {"seconds": {"jit": 0.001}}}}',
                                     '{"version": 4, "entries": {"KEY": {"seconds": {"onnxruntime-int8": 0.001}}}}',
                                     '{"version": 4, "entries": {"KEY": {"seconds": {"jit": -1}}}}',
                                     '{"version": 4, "entries": {"KEY": {"seconds": {"jit NCHW": 0.1}}}}',
                                     # a whole table, timed before the pause after ONNX Runtime (SETTLE_AFTER)
                                     '{"version": 3, "entries": {"KEY": {"seconds": ALL}}}'])
def test_a_corrupt_cache_file_is_measured_again_and_rewritten(tiny_model, tuning, monkeypatch, content):
    timer = fake(monkeypatch, jit=0.1)
    x = torch.rand(*LARGE)
    key = tuning_cache.key_text(tuning_cache.table_key(tiny_model, probes(tiny_model, x.shape)))
    tuning.parent.mkdir(parents=True)
    old_table = {c.name: 0.001 if c.name == "eager NCHW" else 1.0 for c in autotune.available_candidates(tiny_model)}
    tuning.write_text(content.replace('"KEY"', json.dumps(key)).replace("ALL", json.dumps(old_table)), encoding="latin-1")
    used = runners_used(monkeypatch)
    tiny_model.upscale(x)
    assert timer.calls and used == [("jit", torch.contiguous_format)]
    side = probe(tiny_model, x)[1]  # (320)
    assert json.loads(tuning.read_text())["entries"][key]["seconds"]["jit"] == pytest.approx(0.1 * side**2 / 256**2)


def test_tuning_off_follows_the_fixed_order(tiny_model, tuning, monkeypatch):
    monkeypatch.setenv(autotune.TUNE_ENV, "0")
    timer = fake(monkeypatch, eager_nchw=0.001)
    used = runners_used(monkeypatch)
    tiny_model.upscale(torch.rand(*LARGE))
    fixed = backends.resolve_backend(tiny_model, "auto", pixels=LARGE[-1] * LARGE[-2])
    assert timer.calls == [] and [b for b, _ in used] == [fixed] and not tuning.exists()


def test_small_inputs_named_backends_and_bicubic_are_not_measured(tiny_model, tuning, monkeypatch):
    from bsr_hub.evaluation.bicubic import BicubicModel

    timer = fake(monkeypatch)
    tiny_model.upscale(torch.rand(*SMALL))
    tiny_model.upscale(torch.rand(*LARGE), backend="eager")
    BicubicModel(2, uint8=False).upscale(torch.rand(*LARGE))
    assert timer.calls == []


def test_the_caller_s_layout_is_kept(tiny_model, tuning, monkeypatch):
    fake(monkeypatch, eager_cl=0.1, eager_nchw=0.2, onnxruntime=0.3, jit=0.4)
    used = runners_used(monkeypatch)
    tiny_model.upscale(torch.rand(*LARGE), channels_last=False)
    assert used == [("eager", torch.contiguous_format)]  # the fastest in NCHW, not eager channels_last
    autotune.forget()
    tuning.unlink()  # measured anew, as in a process on another machine
    fake(monkeypatch, eager_cl=0.2, eager_nchw=0.3, jit=0.1)
    tiny_model.upscale(torch.rand(*LARGE), channels_last=True)
    assert used[-1][0] == "jit"  # layout-free: fit for the layout asked for


def test_only_lossless_backends_and_native_bf16_are_candidates(tiny_model, monkeypatch):
    """int8 and torch.compile never; bf16 autocast only where the CPU computes bf16 natively and the network keeps
    its output in float32 (BSRNetwork does; a module that does not say so is not given bf16)."""
    from bsr_hub.core import cpu

    for native in (False, True):
        monkeypatch.setattr(cpu, "has_native_bf16", lambda native=native: native)
        names = {c.backend for c in autotune.available_candidates(tiny_model)}
        assert names - {"eager-bf16"} <= {"eager", "jit", "onnxruntime"} and "eager" in names
        assert ("eager-bf16" in names) == native
    monkeypatch.setattr(type(tiny_model), "output_fp32_under_autocast", False)
    assert "eager-bf16" not in {c.backend for c in autotune.available_candidates(tiny_model)}
    assert autotune._valid_seconds({"onnxruntime-int8": 0.001, "eager NCHW": 1.0}) is None
    assert autotune._valid_seconds({"compile NCHW": 0.001}) is None


def test_two_processes_that_measured_at_once_agree(tuning):
    key = {"k": 1}
    first = autotune._store("K", key, {"eager NCHW": 0.2, "jit": 0.1})
    second = autotune._store("K", key, {"eager NCHW": 0.1, "jit": 0.2})  # measured meanwhile, stored later
    assert second == first  # the later one adopts the stored table: one choice per key on the machine
    assert autotune.Tuning(second, dict.fromkeys(second, autotune.Probe((1, 64, 64)))).best().name == "jit"


def test_what_measuring_each_candidate_cost_is_reported_where_it_was_measured(tiny_checkpoint, tuning, monkeypatch,
                                                                             capsys):
    """A first call's measurement can take seconds (builds, passes on large tiles): `bsr-hub bench` says what each
    candidate cost and, of that, its build, from a clock that a fake timer advances by its pass time and a fake build
    by 1 s on the first use of each candidate (so the cost is the build and the warm-up-free passes here); a table
    read back from the cache has no costs."""
    clock = {"now": 0.0}
    built = set()
    timer = FakeTimer({"eager channels_last": 0.05, "eager NCHW": 0.5})

    def timing(model, candidate, x, warm_up=True):
        seconds = timer(model, candidate, x, warm_up)
        clock["now"] += seconds
        return seconds

    def build(model, backend, memory_format):
        if (backend, memory_format) not in built:
            clock["now"] += 1.0
            built.add((backend, memory_format))

    monkeypatch.setattr(autotune, "_time_candidate", timing)
    monkeypatch.setattr(autotune, "get_runner", build)
    monkeypatch.setattr(autotune, "_clock", lambda: clock["now"])
    assert main(["bench", str(tiny_checkpoint), "--size", "300x260", "--repeats", "1", "--json"]) == 0
    rows = {row["candidate"]: row for row in json.loads(capsys.readouterr().out)["candidates"]}
    assert set(rows) == {c.name for c in autotune.available_candidates(BSRModel.from_pretrained(tiny_checkpoint))}
    for name, row in rows.items():
        passes = 2 if row["image_seconds"] <= autotune.RETIME_WITHIN * min(r["image_seconds"] for r in rows.values()) else 1
        assert row["measure_seconds"] == pytest.approx(1.0 + passes * row["seconds"]), name
        assert row["build_seconds"] == pytest.approx(1.0), name  # the first use only, not the second pass
    assert rows["eager NCHW"]["measure_seconds"] == pytest.approx(1.0 + rows["eager NCHW"]["seconds"])  # one pass
    assert main(["bench", str(tiny_checkpoint), "--size", "300x260", "--repeats", "1", "--retune"]) == 0
    out = capsys.readouterr().out
    assert "measuring it (of which the build)" in out
    rows = [line for line in out.splitlines() if " ms " in line]
    assert len(rows) == len(autotune.available_candidates(BSRModel.from_pretrained(tiny_checkpoint)))
    assert all("(0.00 s)" in line for line in rows)  # each built by the run before, in this process
    assert main(["bench", str(tiny_checkpoint), "--size", "300x260", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "from the cache" in out and "measuring it" not in out


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning_cache.cache_path() == tmp_path / "xdg" / "bsr_hub" / "autotune.json"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert tuning_cache.cache_path() == tmp_path / "mine" / "autotune.json"


def test_bench_command_prints_the_table_and_stores_it(tiny_checkpoint, tuning, monkeypatch, capsys):
    fake(monkeypatch, eager_cl=0.05, eager_nchw=0.5)
    assert main(["bench", str(tiny_checkpoint), "--size", "64x48", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "eager channels_last" in out and "<- fastest" in out and "upscale / raw forward" in out
    for step in ("conversion in", "network (1 passes)", "tiling", "conversion out"):
        assert step in out
    assert json.loads(tuning.read_text())["entries"]
    assert main(["bench", str(tiny_checkpoint), "--size", "64x48", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measured_now"] is False  # the stored table, read back
    assert report["candidates"][0]["candidate"] == "eager channels_last"
    assert set(report["steps"]) == {"conversion in", "network", "tiling", "conversion out"}


def test_the_real_measurement_times_every_candidate(tiny_model):
    """No fake timer: each candidate is built and run on the probe (and the contenders twice); what the clock says
    is not checked, only that every candidate has a time."""
    probes = {c.name: autotune.Probe((1, 64, 64)) for c in autotune.available_candidates(tiny_model)}
    seconds, costs, builds = autotune._measure(tiny_model, probes)
    assert set(seconds) == set(costs) == set(builds) == {c.name for c in autotune.available_candidates(tiny_model)}
    assert all(0 < s < 60 for s in seconds.values())
    assert all(costs[name] >= seconds[name] + builds[name] for name in seconds)  # a pass, its build, warm-up, ...
    assert builds["eager NCHW"] < builds.get("jit", 1.0)  # eager builds nothing; a TorchScript graph is traced


def test_each_backend_is_judged_by_its_estimated_time_for_the_image(tiny_model, tuning, monkeypatch):
    """ONNX Runtime runs larger tiles that recompute less overlap: a candidate's time per pixel on its own probe counts
    per pixel of what its own plan runs. Where both plans run the image whole the same pass decides."""
    pytest.importorskip("onnxruntime")
    fake(monkeypatch, eager_nchw=0.3, eager_cl=0.100, jit=0.3, onnxruntime=0.102)  # per 256x256 pixels
    used = runners_used(monkeypatch)
    shape = (1, 3, 1000, 700)
    work = {b: tiling_module.pixels_run(1000, 700, api.resolve_tiling("auto", 16, tiny_model, shape, b), 8)
            for b in ("eager", "onnxruntime")}
    assert work["onnxruntime"] < 0.95 * work["eager"]  # (0.94)
    tiny_model.upscale(torch.rand(*shape))
    assert used[-1][0] == "onnxruntime"
    tuning = autotune.tune(tiny_model, probes(tiny_model, shape))
    assert not tuning.fresh
    assert tuning.image_seconds("onnxruntime") == pytest.approx(0.102 * work["onnxruntime"] / 256**2)
    tiny_model.upscale(torch.rand(*LARGE))  # whole for both: eager channels_last's faster pass decides
    assert used[-1] == ("eager", torch.channels_last)


def test_times_measured_apart_are_never_weighed_together(tiny_model, tuning, monkeypatch):
    """A table is stored under every candidate's probe and measured whole: a later call that shares one probe but not
    the others measures them all again (a time taken under another load never decides against a fresh one), and one
    whose probes all match reads the table, in this process and in a later one."""
    timer = fake(monkeypatch)
    first = {"eager NCHW": autotune.Probe((1, 64, 64)), "jit": autotune.Probe((1, 64, 64), work=0.5)}
    autotune.tune(tiny_model, first)
    other = {"eager NCHW": autotune.Probe((1, 64, 64)), "jit": autotune.Probe((1, 128, 128), work=0.125)}
    timer.calls.clear()
    assert autotune.tune(tiny_model, other).fresh
    assert {name for name, _ in timer.calls} == {"eager NCHW", "jit"}
    timer.calls.clear()
    assert not autotune.tune(tiny_model, first).fresh
    autotune.forget()  # a new process
    assert not autotune.tune(tiny_model, other).fresh and timer.calls == []


def test_retune_measures_again_and_replaces_the_table(tiny_model, tuning, monkeypatch):
    table = {"eager NCHW": autotune.Probe((1, 64, 64)), "jit": autotune.Probe((1, 64, 64))}
    fake(monkeypatch, jit=0.1)
    assert autotune.tune(tiny_model, table).best().name == "jit"
    fake(monkeypatch, eager_nchw=0.1)
    retuned = autotune.tune(tiny_model, table, fresh=True)
    assert retuned.fresh and retuned.best().name == "eager NCHW"
    autotune.forget()
    assert autotune.tune(tiny_model, table).best().name == "eager NCHW"  # what a later process reads


def test_retune_measures_even_where_the_cache_cannot_be_written(tiny_model, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    autotune.forget()
    table = {"eager NCHW": autotune.Probe((1, 64, 64)), "jit": autotune.Probe((1, 64, 64))}
    fake(monkeypatch, jit=0.1)
    assert autotune.tune(tiny_model, table).best().name == "jit"
    timer = fake(monkeypatch, eager_nchw=0.1)
    retuned = autotune.tune(tiny_model, table, fresh=True)
    assert retuned.fresh and timer.calls and retuned.best().name == "eager NCHW"
    assert "could not write the autotune cache" in caplog.text
    autotune.forget()


def test_bf16_is_chosen_where_it_is_fastest_but_never_for_a_score(tiny_model, tuning, monkeypatch):
    """On a CPU with native bf16 eager-bf16 is a candidate and runs where it measured fastest; within exact_only
    (which the evaluation protocol uses) it is not, so a published score never depends on a timing."""
    import numpy as np

    from bsr_hub.core import cpu
    from bsr_hub.evaluation.protocol import score_image

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    monkeypatch.setattr(autotune, "_time_candidate", FakeTimer({"eager-bf16 channels_last": 0.01}))
    used = runners_used(monkeypatch)
    tiny_model.upscale(torch.rand(*LARGE))
    assert used[-1] == ("eager-bf16", torch.channels_last)
    with autotune.exact_only():
        tiny_model.upscale(torch.rand(*LARGE))
    assert used[-1][0] != "eager-bf16"
    hr = np.random.default_rng(0).integers(0, 256, (LARGE[2] * tiny_model.scale, LARGE[3] * tiny_model.scale, 3))
    score_image(tiny_model, hr.astype(np.uint8), tiny_model.scale)
    assert used[-1][0] != "eager-bf16"
    tiny_model.upscale(torch.rand(*LARGE))  # outside it again
    assert used[-1][0] == "eager-bf16"
