"""The dashboards driven headless, the way a reader drives them: set a control's value,
click a button, read the state, the table and the plot data."""
import threading
import time
import types

import pytest

pytest.importorskip("ipywidgets")

from duat.widgets import DepthWidthExplorer, LiveTrainer, dashboard  # noqa: E402

SMALL = dict(dim=32, heads=2, image_size=8, in_channels=1, patch_size=2, reps=3,
             seconds_per_model=0.2)


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


def test_dashboard_has_both_tabs():
    tabs, explorer, trainer = dashboard(dict(SMALL), dict(epochs=1))
    assert tabs.children == (explorer.widget, trainer.widget)
    assert tabs.get_title(0).startswith("Latency") and tabs.get_title(1).startswith("Accuracy")


# ---------------------------------------------------------------- honest measurements

@pytest.fixture
def fake_timer(monkeypatch):
    """The benchmark's timer, replaced: every call still runs, but the k-th call (k = 0, 1,
    ...) of each timed callable "takes" timer.clock(k) seconds, so the test sets the readings."""
    import duat.bench.harness as harness

    calls = {}
    timer = types.SimpleNamespace(clock=lambda k: 1e-3)

    def time_calls(fn, n, device):
        out = []
        for _ in range(n):
            fn()
            k = calls[fn] = calls.get(fn, -1) + 1
            out.append(timer.clock(k))
        return out

    monkeypatch.setattr(harness, "time_calls", time_calls)
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
        assert forward_calls[r["model"]] == r["warmup"] + r["reps"]
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
