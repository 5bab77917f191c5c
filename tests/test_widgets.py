"""The dashboards driven headless, the way a reader drives them: set a control's value,
click a button, read the state, the table and the plot data."""
import re
import threading
import time

import pytest

pytest.importorskip("ipywidgets")

import torch  # noqa: E402

from duat.widgets import DepthWidthExplorer, DeviceTimer, LiveTrainer, dashboard  # noqa: E402
from duat.widgets.timer import ModelTiming  # noqa: E402

SMALL = dict(dim=32, heads=2, image_size=8, in_channels=1, patch_size=2, reps=3,
             seconds_per_model=0.2)

FAKE_US_PER_OP = 10.0     # the per-op overhead reading a FakeTimer gives by default
FAKE_PEAK_GFLOPS = 50.0   # ... and its matmul peak


class FakeTimer(DeviceTimer):
    """The explorer's timer with set readings, so that the explorer tests are fast and
    deterministic. The matmul peak is FAKE_PEAK_GFLOPS. op_overhead returns the readings
    (median, p25, p75 in us) of `overheads` in turn, the last one again once they run out,
    and lists each (device, reps) asked for in `.overhead_calls`. time_models still calls
    each model (its warm-up calls, then its timed ones), but the k-th timed call (k = 0,
    1, ...) "takes" clock(k) seconds; with clock None the real timing loop runs. Op counts
    are real."""

    def __init__(self, clock=lambda k: 1e-3,
                 overheads=((FAKE_US_PER_OP, 0.9 * FAKE_US_PER_OP, 1.1 * FAKE_US_PER_OP),)):
        self.clock, self.overheads, self.overhead_calls = clock, list(overheads), []

    def matmul_gflops(self, device):
        return FAKE_PEAK_GFLOPS

    def op_overhead(self, device, reps):
        median, p25, p75 = self.overheads[min(len(self.overhead_calls), len(self.overheads) - 1)]
        self.overhead_calls.append((device, reps))
        return dict(us_per_op=median, us_p25=p25, us_p75=p75, ops=283, calls=reps, probe="fake")

    def time_models(self, models, x, warmup, reps, rounds, seconds_per_model):
        if self.clock is None:
            return super().time_models(models, x, warmup, reps, rounds, seconds_per_model)
        with torch.inference_mode():
            for model in models:
                for _ in range(warmup + reps):
                    model(x)
        return [ModelTiming(warmup, [self.clock(k) for k in range(reps)]) for _ in models]


def _eventually(condition, seconds=60.0) -> bool:
    """Whether condition() comes true within `seconds` (asked every 10 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def explorer():
    return DepthWidthExplorer(depth=1, width=2, **SMALL, timer=FakeTimer())


def test_every_explorer_control_updates_state_and_table(explorer):
    changes = [("depth", 2), ("width", 3), ("dim", 64), ("heads", 4), ("batch", 4), ("device", "cpu")]
    for name, value in changes:
        getattr(explorer, name).value = value
        assert explorer.state[name] == value
    assert explorer.model_names() == ("pf-2-3", "vit-6")
    assert "Para-Former-2-3" in explorer.table_html.value and "ViT-6" in explorer.table_html.value
    rows = explorer.rows()
    assert rows[0]["params"] == rows[1]["params"]          # same layers, same parameters
    assert rows[0]["gflops"] == rows[1]["gflops"]          # ... and the same FLOPs


def test_sliders_do_not_fire_while_dragging(explorer):
    assert explorer.depth.continuous_update is False and explorer.width.continuous_update is False


def test_measure_button_adds_results_and_plot_data():
    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL, timer=FakeTimer(clock=None))  # timed for real
    before = explorer.plot.value
    explorer.measure_button.click()
    assert [r["model"] for r in explorer.results] == ["pf-1-2", "vit-2"]
    assert all(r["median_ms"] > 0 and r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] for r in explorer.results)
    explorer.width.value = 4
    explorer.measure_button.click()
    data = explorer.plot_data()
    assert [p[0] for p in data["parallel"]] == [2, 4]
    assert [p[0] for p in data["serial"]] == [2, 4]
    assert [p[0] for p in data["bound"]] == [1, 2, 3, 4]
    bounds = [ms for _, ms in data["bound"]]
    assert bounds == sorted(bounds) and bounds[0] > 0      # the FLOP bound grows with layers
    assert explorer.plot.value != before                    # the plot was redrawn
    assert "serial / parallel" in explorer.message
    explorer.clear_button.click()
    assert explorer.results == [] and explorer.plot_data()["parallel"] == []


def test_bound_line_uses_the_models_flop_count(explorer):
    from duat.counting import flops
    from duat.registry import model_config

    explorer.measure()
    peak = explorer.peak_gflops("cpu")
    assert peak == FAKE_PEAK_GFLOPS                        # the timer's reading
    L, ms = explorer.plot_data()["bound"][-1]
    c = model_config(f"vit-{L}", dim=32, heads=2, image_size=8, in_channels=1, patch_size=2)
    assert ms == pytest.approx(flops(c, 1) / (peak * 1e9) * 1e3)


def test_invalid_heads_shows_a_message_and_does_not_raise(explorer):
    explorer.dim.value = 32
    explorer.heads.value = 3
    assert "not divisible" in explorer.message
    explorer.measure_button.click()                          # must not raise
    assert "cannot measure" in explorer.message and explorer.results == []


def test_absent_device_shows_a_message(explorer, monkeypatch):
    import duat.widgets.explorer as ex

    monkeypatch.setattr(ex, "available_devices", lambda: ["cpu"])
    explorer.device.value = "cuda"
    assert "not present" in explorer.message
    assert explorer.measure() is None and explorer.results == []


@pytest.fixture
def trainer():
    return LiveTrainer(model="pf-1-2", epochs=2, fraction=0.3, batch_size=32)


def test_trainer_controls_update_state(trainer):
    trainer.model.value = "vit-2"
    trainer.epochs.value = 3
    trainer.size.value = "small"
    assert trainer.state["model"] == "vit-2" and trainer.state["epochs"] == 3
    assert trainer.state["size"] == "small" and trainer.state["dataset"] == "digits"


def test_start_button_trains_and_adds_a_run(trainer):
    trainer.start_button.click()
    assert trainer.join(120) == "finished"
    assert len(trainer.history) == 2 and trainer.progress.value == trainer.progress.max
    run = trainer.runs[-1]
    assert run["epochs_completed"] == 2 and 0.0 <= run["test_acc"] <= 1.0
    assert "pf-1-2" in trainer.table_html.value
    assert not trainer.start_button.disabled and trainer.stop_button.disabled
    trainer.model.value = "vit-2"
    trainer.run(120)
    assert [r["model"] for r in trainer.runs] == ["pf-1-2", "vit-2"]   # the comparison grows


def test_stop_button_halts_within_one_batch(trainer):
    batches = []
    started = threading.Event()

    def watch(event):
        if event.kind == "batch":
            batches.append(event.step)
            started.set()

    original = trainer._on_event
    trainer._on_event = lambda e: (watch(e), original(e))[1]
    trainer.epochs.value = 50
    trainer.start_button.click()
    assert started.wait(60)
    trainer.stop_button.click()
    seen = len(batches)
    assert trainer.join(60) == "stopped"
    assert len(batches) <= seen + 1                  # at most the batch already in flight
    assert trainer.runs[-1]["status"] == "stopped"
    assert trainer.runs[-1]["epochs_completed"] < 50


def test_unavailable_dataset_shows_a_message(trainer, monkeypatch, tmp_path):
    monkeypatch.setenv("DUAT_DATA", str(tmp_path))
    import duat.data as data

    def offline(*args, **kwargs):
        raise data.DatasetUnavailableError("dataset 'mnist' is not available offline; 'digits' works offline")

    monkeypatch.setattr(data, "load_data", offline)
    trainer.dataset.value = "mnist"
    assert trainer.run(60) == "failed"
    assert "digits" in trainer.message and trainer.runs == []


def test_a_second_start_while_running_is_refused(trainer):
    trainer.epochs.value = 50
    assert trainer.start()
    assert trainer.start() is False and "already" in trainer.message
    trainer.stop()
    assert trainer.join(60) == "stopped"


def test_the_trainer_trains_with_the_quick_sweeps_recipe(monkeypatch):
    """Its defaults are `duat reproduce accuracy-vs-width --quick`'s plan, and they reach fit:
    warm-up over the plan's share of the run, its weight decay, 4x4 patches."""
    import duat.widgets.trainer as tr
    from duat.experiments.sweeps import SWEEPS

    plan = SWEEPS["accuracy-vs-width"].quick
    trainer = LiveTrainer()
    s = trainer.state
    keys = ("dataset", "size", "epochs", "lr", "batch_size", "warmup", "weight_decay")
    assert [s[k] for k in keys] == [getattr(plan, k) for k in keys]
    assert s["patch_size"] == plan.model_overrides["patch_size"] == 4
    seen = {}

    def fit(model, train, val, config, **kwargs):
        seen.update(config=config, patch=model.config.patch_size, batch=train.batch_size)
        raise RuntimeError("enough")

    monkeypatch.setattr(tr, "fit", fit)
    assert trainer.run(60) == "failed" and "enough" in trainer.message
    assert seen["config"].warmup_epochs == pytest.approx(plan.warmup * plan.epochs)
    assert seen["config"].lr == plan.lr and seen["config"].weight_decay == plan.weight_decay
    assert seen["patch"] == 4 and seen["batch"] == plan.batch_size


def test_expected_accuracy_reads_the_committed_sweep():
    from duat.widgets.trainer import expected_accuracy

    e = expected_accuracy("pf-1-4")
    assert e["seeds"] == 3 and e["min"] <= e["mean"] <= e["max"]
    assert e["floor"] == pytest.approx(e["mean"] - max(4 * e["std"], 0.03))
    assert 0.9 < e["floor"] < e["min"]
    with pytest.raises(KeyError):
        expected_accuracy("pf-7-7")


@pytest.mark.slow
def test_a_default_run_is_seed_0_of_the_sweep():
    """Para-Former-1-4 with the defaults is one run of the committed sweep: its test accuracy
    lies above the sweep's floor (on the sweep's CPU it is the sweep's seed-0 number)."""
    from duat.widgets.trainer import expected_accuracy

    trainer = LiveTrainer()
    assert trainer.run(600) == "finished"
    assert trainer.runs[-1]["test_acc"] >= expected_accuracy("pf-1-4")["floor"]


def test_snapshots_are_static_png_pictures_of_the_plots(explorer, trainer):
    from IPython.display import Image

    explorer.measure()
    for dash in (explorer, trainer):
        picture = dash.snapshot()
        assert isinstance(picture, Image) and picture.format == "png"
        assert picture.data == bytes(dash.plot.value) and picture.data.startswith(b"\x89PNG")
        assert not re.search(rb"/work/|/home/|/root/|/Users/|site-packages", _png_text(picture.data))


def _png_text(png: bytes) -> bytes:
    """The text chunks of a PNG, concatenated (a machine's path must not be among them)."""
    import struct

    out, i = b"", 8
    while i < len(png):
        n, kind = struct.unpack(">I4s", png[i:i + 8])
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            out += png[i + 8:i + 8 + n]
        i += 12 + n
    return out


def test_the_plot_line_goes_through_the_newest_clean_reading():
    from duat.widgets.explorer import line_readings

    def reading(layers, ms, noisy=None):
        return dict(layers=layers, median_ms=ms, noisy=noisy)

    a, b, c, d, e = (reading(4, 1.0), reading(4, 9.0, "spread"), reading(4, 1.2), reading(8, 5.0, "slow"),
                     reading(8, 6.0, "spread"))
    chosen = line_readings([a, b, c, d, e])
    assert chosen[4] is c          # the newest clean one, not the newer noisy b nor the older a
    assert chosen[8] is e          # all noisy: the newest
    assert line_readings([a, b])[4] is a and line_readings([]) == {}


def test_dashboard_has_both_tabs():
    tabs, explorer, trainer = dashboard(dict(SMALL), dict(epochs=1))
    assert tabs.children == (explorer.widget, trainer.widget)
    assert tabs.get_title(0).startswith("Latency") and tabs.get_title(1).startswith("Accuracy")


# ---------------------------------------------------------------- honest measurements

def test_noise_reason_flags_a_wide_spread_or_a_slowdown():
    from duat.widgets.explorer import SLOWDOWN_LIMIT, SPREAD_LIMIT, noise_reason

    tight = dict(median_ms=1.0, p25_ms=0.95, p75_ms=1.05)
    assert noise_reason(tight, []) is None
    assert noise_reason(tight, [0.9, 1.2]) is None
    assert noise_reason(dict(median_ms=1.2, p25_ms=1.0, p75_ms=SPREAD_LIMIT), []) is None  # at the limit
    wide = dict(median_ms=1.2, p25_ms=1.0, p75_ms=SPREAD_LIMIT + 0.01)
    assert noise_reason(wide, []).startswith("spread: p75/p25 = 1.51")
    at_limit = dict(median_ms=SLOWDOWN_LIMIT, p25_ms=1.95, p75_ms=2.05)
    assert noise_reason(at_limit, [1.0, 4.0]) is None
    slow = dict(median_ms=2.5, p25_ms=2.45, p75_ms=2.55)
    assert noise_reason(slow, [3.0, 1.0]).startswith("slow: median 2.5x the best earlier")
    both = noise_reason(dict(median_ms=3.0, p25_ms=1.0, p75_ms=4.0), [1.0])
    assert both.startswith("spread") and "; slow" in both


def test_noisy_readings_are_kept_flagged_and_shown():
    fake_timer = FakeTimer(clock=lambda k: 1e-3)
    explorer = DepthWidthExplorer(depth=1, width=2, **dict(SMALL, reps=8, seconds_per_model=5.0),
                                  timer=fake_timer)
    explorer.measure_button.click()                       # steady 1 ms: clean
    assert [r["noisy"] for r in explorer.results] == [None, None]
    assert "noisy" not in explorer.message and "paused" not in explorer.message
    fake_timer.clock = lambda k: 3e-3                     # steady, but 3x slower than before
    explorer.measure_button.click()
    assert all(r["noisy"].startswith("slow: median 3.0x") for r in explorer.results[-2:])
    assert "Too noisy, measure again" in explorer.message and "slow: median 3.0x" in explorer.message
    assert "too noisy: why" in explorer.table_html.value and "slow: median 3.0x" in explorer.table_html.value
    fake_timer.clock = lambda k: 1e-3 if k % 2 else 3e-3  # alternating 1 and 3 ms: a wide spread
    explorer.measure_button.click()
    assert [r["noisy"] for r in explorer.results[-2:]] == ["spread: p75/p25 = 3.00 (limit 1.5)"] * 2
    assert len(explorer.results) == 6                     # noisy readings are kept ...
    marks = [p[5] is not None for p in explorer.plot_data()["parallel"]]
    assert marks == [False, True, True]                   # ... and marked (sorted by median)


def test_each_model_is_warmed_up_before_its_timed_calls(monkeypatch):
    """The real timing loop (DeviceTimer.time_models) with the explorer's schedule: each
    model's WARMUP_CALLS untimed calls come before its timed ones, which run with garbage
    collection off; then one more pass, the op count's."""
    import gc

    import duat.widgets.explorer as ex

    calls = []   # (model, garbage collection on?) of every forward pass, in order
    real_create = ex.create_model

    def watched(name, **kwargs):
        model = real_create(name, **kwargs)
        model.register_forward_pre_hook(lambda m, a: calls.append((name, gc.isenabled())))
        return model

    monkeypatch.setattr(ex, "create_model", watched)
    explorer = DepthWidthExplorer(depth=1, width=2, **dict(SMALL, seconds_per_model=30.0),
                                  timer=FakeTimer(clock=None))
    explorer.measure()
    assert [r["model"] for r in explorer.results] == ["pf-1-2", "vit-2"]
    for r in explorer.results:
        assert r["warmup"] == ex.WARMUP_CALLS and r["reps"] == len(r["samples_ms"]) == 3
        passes = [gc_on for name, gc_on in calls if name == r["model"]]
        assert passes == [True] * r["warmup"] + [False] * r["reps"] + [True]


def test_measure_holds_a_running_training_run_and_lets_it_go_on(trainer):
    steps, seen, started = [], {}, threading.Event()
    original = trainer._on_event

    def on_event(event):
        original(event)                 # a held run waits in here
        steps.append(event.step)
        started.set()

    trainer._on_event = on_event

    class Watching(FakeTimer):          # the explorer's timing, watched from inside
        def time_models(self, *args, **kwargs):
            before = len(steps)
            # a held run waits at the end of its batch; one that is not held takes its next
            # step: wait for the one or the other, so that a run left going is caught stepping
            seen["waited"] = _eventually(lambda: trainer.held or len(steps) > before)
            seen.update(held=trainer.held, message=trainer.message)
            timings = super().time_models(*args, **kwargs)
            seen.update(steps=len(steps) - before, held_after=trainer.held)
            return timings

    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL, timer=Watching())
    trainer.epochs.value = 50
    trainer.start_button.click()
    try:
        assert started.wait(60)
        explorer.measure_button.click()
        assert seen["waited"] and seen["steps"] == 0    # no training step while timing ...
        assert seen["held"] and seen["held_after"]      # ... held from its start to its end
        assert seen["message"].startswith("paused")
        assert [r["model"] for r in explorer.results] == ["pf-1-2", "vit-2"]
        assert "paused while timing" in explorer.message
        held_at = len(steps)
        assert _eventually(lambda: len(steps) > held_at)   # ... and it goes on afterwards
        assert trainer.running and not trainer.held
        assert not trainer.message.startswith("paused")
    finally:
        trainer.stop()
    assert trainer.join(60) == "stopped"


def test_measure_refuses_while_a_run_cannot_be_paused(explorer, trainer, monkeypatch):
    import duat.data as data
    import duat.widgets.trainer as tr

    loading, release = threading.Event(), threading.Event()
    real_load = data.load_data

    def slow_load(*args, **kwargs):     # the run sits in its data loading: no batch boundary
        loading.set()
        release.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(data, "load_data", slow_load)
    monkeypatch.setattr(tr, "PAUSE_WAIT_S", 0.05)
    trainer.start()
    try:
        assert loading.wait(60)
        explorer.measure_button.click()
        assert explorer.results == []
        assert "training run is in progress" in explorer.message and "Stop it" in explorer.message
        assert trainer.running
    finally:
        trainer.stop()
        release.set()
    assert trainer.join(60) == "stopped"


def test_paused_without_a_run_is_a_no_op(trainer):
    with trainer.paused() as ok:
        assert ok and not trainer.running
    assert trainer.run(120) == "finished"               # a later run is not held


# ---------------------------------------------------------------- the overhead floor

def _count(name, batch, passes=2, **kw):
    """count_ops of the n-th forward pass (default: the second) of a fresh model `name`."""
    from duat.bench.timing import count_ops
    from duat.registry import create_model

    kw = dict(dict(dim=32, heads=2, image_size=8, in_channels=1, patch_size=2), **kw)
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    x = torch.zeros(batch, kw["in_channels"], kw["image_size"], kw["image_size"])
    counts = [count_ops(lambda: model(x)) for _ in range(passes)]
    return counts[-1]


def test_records_carry_ops_and_the_overhead_model(explorer):
    explorer.batch.value = 4
    new = explorer.measure()
    assert [r["model"] for r in new] == ["pf-1-2", "vit-2"]
    for r in new:
        assert r["ops"] == _count(r["model"], 4)               # a warm model's count at its batch
        assert r["us_per_op"] == FAKE_US_PER_OP
        assert r["overhead_ms"] == pytest.approx(r["ops"] * FAKE_US_PER_OP / 1e3)
        assert r["predicted_ms"] == pytest.approx(max(r["overhead_ms"], r["bound_ms"]))
        assert r["bound_by"] == ("overhead" if r["overhead_ms"] >= r["bound_ms"] else "flops")
    assert "overhead floor ms" in explorer.table_html.value and "aten ops" in explorer.table_html.value
    assert f"{new[1]['overhead_ms']:.3g}" in explorer.table_html.value
    assert "Bound by: Para-Former-1-2 overhead" in explorer.message   # tiny models: overhead-bound


def test_overhead_floors_flat_in_n_for_para_former_linear_in_L_for_vit(explorer):
    for n in (2, 4, 8):
        explorer.width.value = n
        explorer.measure()
    data = explorer.plot_data()
    par, ser = dict(data["floor_parallel"]), dict(data["floor_serial"])
    assert sorted(par) == [2, 4, 8] and sorted(ser) == list(range(1, 9))
    # Para-Former-1-n: one batched stage, whatever n: its floor hardly moves from n = 2 to 8
    assert max(par.values()) / min(par.values()) < 1.1
    # ViT-L: L layers one after another: the floor grows by the same step per layer ...
    steps = [ser[L + 1] - ser[L] for L in range(1, 8)]
    assert min(steps) > 0 and max(steps) == pytest.approx(min(steps))
    assert ser[8] / ser[2] > 3                                  # ... so 4x the layers: over 3x the floor
    assert ser[8] > 3 * par[8]
    # the lines are the records' own counts: the serial fit hits every measured ViT exactly
    for r in explorer.results:
        line = ser if r["model"].startswith("vit") else par
        assert line[r["layers"]] == pytest.approx(r["overhead_ms"])
    # and they are drawn, dotted, next to the FLOP bound
    assert data["bound"] and explorer.plot.value
    explorer.clear()
    assert explorer.plot_data()["floor_serial"] == explorer.plot_data()["floor_parallel"] == []


def test_op_counts_do_not_depend_on_the_batch():
    """The serial floor is counted at batch 1 (ViT-1, ViT-2) and extrapolated in L: right only
    if a ViT's count is the same at every batch and linear in L."""
    for name in ("vit-1", "vit-2", "vit-5"):
        assert len({_count(name, b, passes=p) for b in (1, 3, 16) for p in (1, 2)}) == 1, name
    one, two = _count("vit-1", 1), _count("vit-2", 1)
    assert _count("vit-7", 8) == one + 6 * (two - one)
    # Para-Former at batches whose rows fit one batched call (ParallelStage.cpu_row_budget):
    # the same count; the explorer counts each measured model at its own batch anyway
    assert len({_count("pf-1-4", b) for b in (1, 2, 5)}) == 1
    assert len({_count("pf-2-3", b) for b in (1, 4)}) == 1


def test_a_clean_overhead_reading_is_measured_once_per_device():
    import duat.widgets.explorer as ex

    timer = FakeTimer()
    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL, timer=timer)
    explorer.measure()
    explorer.width.value = 3
    explorer.measure()
    assert timer.overhead_calls == [("cpu", ex.OVERHEAD_REPS)]           # measured once, cached
    assert explorer.op_overhead("cpu")["us_per_op"] == FAKE_US_PER_OP and len(timer.overhead_calls) == 1
    assert all(r["us_per_op"] == FAKE_US_PER_OP for r in explorer.results)
    assert "overhead reading" not in explorer.message


def test_a_noisy_overhead_reading_is_measured_again():
    import duat.widgets.explorer as ex

    timer = FakeTimer(overheads=[(30.0, 10.0, 40.0), (20.0, 10.0, 35.0), (50.0, 49.0, 51.0), (1.0, 1.0, 1.0)])
    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL, timer=timer)
    explorer.measure()                      # noisy (p75/p25 = 4): used, flagged
    assert explorer.results[-1]["us_per_op"] == 30.0 and "measured again at the next" in explorer.message
    explorer.measure()                      # noisy again, but lower: kept
    assert explorer.results[-1]["us_per_op"] == 20.0
    explorer.measure()                      # tight but slower (steady contention): not kept
    assert explorer.results[-1]["us_per_op"] == 20.0 and "the lowest is kept" in explorer.message
    explorer.measure()                      # OVERHEAD_TRIES readings taken: no more
    assert explorer.results[-1]["us_per_op"] == 20.0
    assert len(timer.overhead_calls) == ex.OVERHEAD_TRIES == 3


def test_the_device_timer_reads_this_device():
    """The explorer's default timer: duat.bench.timing's readings of this CPU."""
    from duat.registry import create_model

    timer = DeviceTimer()
    assert timer.matmul_gflops("cpu") > 0
    overhead = timer.op_overhead("cpu", 5)
    assert overhead["calls"] == 5 and 0 < overhead["us_p25"] <= overhead["us_per_op"] <= overhead["us_p75"]
    torch.manual_seed(0)
    models = [create_model(name, dim=32, heads=2, image_size=8, in_channels=1, patch_size=2).eval()
              for name in ("pf-1-2", "vit-2")]
    x = torch.zeros(2, 1, 8, 8)
    timings = timer.time_models(models, x, warmup=2, reps=4, rounds=2, seconds_per_model=30.0)
    assert [(t.warmup, len(t.seconds)) for t in timings] == [(2, 4), (2, 4)]
    assert all(0 < t.stats["p25_ms"] <= t.stats["median_ms"] <= t.stats["p75_ms"] for t in timings)
    assert timer.count_ops(lambda: models[1](x)) == _count("vit-2", 2)
