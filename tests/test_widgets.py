"""The dashboards driven headless, the way a reader drives them: set a control's value,
click a button, read the state, the table and the plot data."""
import threading

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
