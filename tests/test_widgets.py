"""The dashboards driven headless, the way a reader drives them: set a control's value,
click a button, read the state, the table and the plot data."""
import re
import threading
import time
import types

import pytest

pytest.importorskip("ipywidgets")

from duat.widgets import DepthWidthExplorer, LiveTrainer, dashboard  # noqa: E402

SMALL = dict(dim=32, heads=2, image_size=8, in_channels=1, patch_size=2, reps=3,
             seconds_per_model=0.2)


FAKE_US_PER_OP = 10.0   # the per-op overhead the explorer tests see (fake_overhead)


@pytest.fixture(autouse=True)
def fake_overhead(monkeypatch):
    """harness.op_overhead, replaced by a fixed reading (10 us per op), so that the explorer
    tests stay fast and deterministic; `.calls` lists each (device, dtype, reps) asked for.
    test_overhead_is_measured_once_per_device runs the real one."""
    import duat.bench.harness as harness

    fake = types.SimpleNamespace(calls=[], real=harness.op_overhead)

    def op_overhead(device="cpu", dtype="float32", reps=50):
        fake.calls.append((str(device), dtype, reps))
        return dict(us_per_op=FAKE_US_PER_OP, us_p25=0.9 * FAKE_US_PER_OP, us_p75=1.1 * FAKE_US_PER_OP,
                    ops=283, calls=reps, probe="fake")

    monkeypatch.setattr(harness, "op_overhead", op_overhead)
    return fake


@pytest.fixture
def explorer():
    return DepthWidthExplorer(depth=1, width=2, **SMALL)


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


def test_measure_button_adds_results_and_plot_data(explorer):
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
    from duat.experiments import EXPERIMENTS

    plan = EXPERIMENTS["accuracy-vs-width"].quick
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

@pytest.fixture
def fake_timer(monkeypatch):
    """The benchmark's timer, replaced: every call still runs, but the k-th call (k = 0, 1,
    ...) of each timed callable "takes" timer.clock(k) seconds, so the test sets the readings."""
    import duat.bench.timing as timing

    calls = {}
    timer = types.SimpleNamespace(clock=lambda k: 1e-3)

    def time_calls(fn, n, device):
        out = []
        for _ in range(n):
            fn()
            k = calls[fn] = calls.get(fn, -1) + 1
            out.append(timer.clock(k))
        return out

    monkeypatch.setattr(timing, "time_calls", time_calls)  # what time_cases calls
    return timer


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


def test_noisy_readings_are_kept_flagged_and_shown(fake_timer):
    explorer = DepthWidthExplorer(depth=1, width=2, **dict(SMALL, reps=8, seconds_per_model=5.0))
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


def test_each_model_is_warmed_up_before_its_timed_calls(fake_timer, monkeypatch):
    import duat.widgets.explorer as ex

    forward_calls = {}
    real_create = ex.create_model

    def counted(name, **kwargs):
        model = real_create(name, **kwargs)
        model.register_forward_pre_hook(
            lambda m, a: forward_calls.__setitem__(name, forward_calls.get(name, 0) + 1))
        return model

    monkeypatch.setattr(ex, "create_model", counted)
    fake_timer.clock = lambda k: (k + 1) * 1e-3           # the k-th call of a model "takes" k+1 ms
    explorer = DepthWidthExplorer(depth=1, width=2, **dict(SMALL, seconds_per_model=30.0))
    explorer.measure()
    assert [r["model"] for r in explorer.results] == ["pf-1-2", "vit-2"]
    for r in explorer.results:
        assert r["warmup"] == ex.WARMUP_CALLS and r["reps"] == 3
        assert forward_calls[r["model"]] == r["warmup"] + r["reps"] + 1   # + 1: the op count's pass
        # the timed samples are the calls after the warm-up ones, in order
        assert r["samples_ms"] == pytest.approx([k + 1 for k in range(r["warmup"], r["warmup"] + r["reps"])])


def test_measure_holds_a_running_training_run_and_lets_it_go_on(explorer, trainer, monkeypatch):
    import duat.bench.harness as harness

    steps, seen, started = [], {}, threading.Event()
    original = trainer._on_event

    def on_event(event):
        original(event)                 # a held run waits in here
        steps.append(event.step)
        started.set()

    trainer._on_event = on_event
    real_time_cases = harness.time_cases

    def timing(*args, **kwargs):        # the explorer's timing, watched from inside
        seen.update(before=len(steps), running=trainer.running, message=trainer.message)
        real_time_cases(*args, **kwargs)
        time.sleep(0.3)                 # room for a run that was not held to take more steps
        seen["after"] = len(steps)

    monkeypatch.setattr(harness, "time_cases", timing)
    trainer.epochs.value = 50
    trainer.start_button.click()
    try:
        assert started.wait(60)
        explorer.measure_button.click()
        assert seen["running"] and seen["message"].startswith("paused")
        assert seen["after"] == seen["before"]          # no training step while timing
        assert [r["model"] for r in explorer.results] == ["pf-1-2", "vit-2"]
        assert "paused while timing" in explorer.message
        held_at = len(steps)
        for _ in range(6000):                           # ... and it goes on afterwards
            if len(steps) > held_at:
                break
            time.sleep(0.01)
        assert len(steps) > held_at and trainer.running
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
    import torch

    import duat.bench.harness as harness
    from duat.registry import create_model

    kw = dict(dict(dim=32, heads=2, image_size=8, in_channels=1, patch_size=2), **kw)
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    x = torch.zeros(batch, kw["in_channels"], kw["image_size"], kw["image_size"])
    counts = [harness.count_ops(lambda: model(x)) for _ in range(passes)]
    return counts[-1]


def test_records_carry_ops_and_the_overhead_model(explorer, fake_timer):
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


def test_overhead_floors_flat_in_n_for_para_former_linear_in_L_for_vit(explorer, fake_timer):
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


def test_overhead_is_measured_once_per_device(fake_overhead, fake_timer, monkeypatch):
    import duat.bench.harness as harness
    import duat.widgets.explorer as ex

    calls = []

    def op_overhead(*args, **kwargs):   # the real one, watched
        calls.append((args, kwargs))
        return fake_overhead.real(*args, **kwargs)

    monkeypatch.setattr(harness, "op_overhead", op_overhead)
    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL)
    explorer.measure()
    explorer.width.value = 3
    explorer.measure()
    assert calls == [(("cpu", "float32"), {"reps": ex.OVERHEAD_REPS})]   # measured once, cached
    probe = explorer.op_overhead("cpu")
    assert probe["calls"] == ex.OVERHEAD_REPS
    assert probe["us_per_op"] == pytest.approx(1e3 / probe["ops"])      # 1 ms a call (fake_timer)
    assert all(r["us_per_op"] == probe["us_per_op"] for r in explorer.results)


def test_a_noisy_overhead_reading_is_measured_again(fake_overhead, fake_timer, monkeypatch):
    import duat.bench.harness as harness
    import duat.widgets.explorer as ex

    readings = [(30.0, 10.0, 40.0), (20.0, 10.0, 35.0), (50.0, 49.0, 51.0), (1.0, 1.0, 1.0)]
    calls = []

    def op_overhead(device="cpu", dtype="float32", reps=50):
        median, p25, p75 = readings[len(calls)]
        calls.append(device)
        return dict(us_per_op=median, us_p25=p25, us_p75=p75, ops=283, calls=reps, probe="fake")

    monkeypatch.setattr(harness, "op_overhead", op_overhead)
    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL)
    explorer.measure()                      # noisy (p75/p25 = 4): used, flagged
    assert explorer.results[-1]["us_per_op"] == 30.0 and "measured again at the next" in explorer.message
    explorer.measure()                      # noisy again, but lower: kept
    assert explorer.results[-1]["us_per_op"] == 20.0
    explorer.measure()                      # tight but slower (steady contention): not kept
    assert explorer.results[-1]["us_per_op"] == 20.0 and "the lowest is kept" in explorer.message
    explorer.measure()                      # OVERHEAD_TRIES readings taken: no more
    assert explorer.results[-1]["us_per_op"] == 20.0
    assert len(calls) == ex.OVERHEAD_TRIES == 3


def test_a_clean_overhead_reading_is_not_measured_again(fake_overhead, fake_timer):
    explorer = DepthWidthExplorer(depth=1, width=2, **SMALL)
    explorer.measure()
    explorer.measure()
    assert len(fake_overhead.calls) == 1 and "overhead reading" not in explorer.message
