"""The depth/width explorer: time Para-Former-m-n against the serial ViT-(m*n) of the same
FLOPs on this device, and place both on a latency-vs-layers plot with the two floors of
the kit's latency model t ~ max(ops x overhead, FLOPs / peak) (notebook 05): the FLOP bound
FLOPs / peak, and the overhead floor ops x overhead, where ops is the number of aten
operations one forward pass dispatches and overhead the measured fixed cost of one
operation on the device.

The maths is docs/method.md section 4: both models have m*n encoder layers and the same FLOPs;
the serial one must run them one after another, Para-Former runs each stage's n layers
as one batched computation. Every measurement goes through the explorer's timer, by
default a DeviceTimer (duat.widgets.timer), which uses the benchmark's own code: untimed
warm-up calls first, then the two models' timed calls in alternating rounds with garbage
collection off, so that a slow drift in machine load hits both alike.

Two things make a latency reading wrong without any error: something else running in the
kernel meanwhile, and a busy machine. Measure therefore holds every live training run of
this process between two batches while it times (duat.widgets.trainer.running_trainers),
and flags a reading as too noisy when its spread is wide or it is far slower than earlier
readings of the same model (SPREAD_LIMIT, SLOWDOWN_LIMIT); the record is kept, marked.

Op counts are of a warm model: the measured models are counted on one more pass after
their timed calls (a first pass can do one-off work). The serial ViT-L's overhead floor grows
with L: its op count is `a + b L` (b a layer's ops, a the embedding, norm and head),
counted once per setting from ViT-1 and ViT-2 at batch 1 (a ViT's count does not depend on
the batch). Para-Former-m-n's floor is its own op count at the measured batch, which grows
with m and hardly with n (one batched computation per stage; on a CPU a stage whose rows
exceed ParallelStage.cpu_row_budget is cut into chunks, so there the count also grows
with the batch).
"""
from __future__ import annotations

import contextlib
import html
import time

import ipywidgets as w
import torch
from IPython.display import display
from matplotlib.ticker import MaxNLocator

from duat.bench.timing import add_overhead_model
from duat.counting import count_parameters, flops
from duat.paraformer import ParaFormer
from duat.registry import create_model, model_config
from duat.runtime import available_devices
from duat.widgets.render import figure_png, html_table, new_figure, picture
from duat.widgets.timer import DeviceTimer
from duat.widgets.trainer import running_trainers

DIMS = [32, 64, 96, 128, 192, 256, 384]
HEADS = [1, 2, 3, 4, 6, 8]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
DEVICES = ["cpu", "cuda", "mps"]

TABLE_COLUMNS = [("label", "model"), ("layers", "layers m·n"), ("params", "parameters"),
                 ("gflops", "GFLOP / pass"), ("median_ms", "latency ms (median)"),
                 ("p25_ms", "p25"), ("p75_ms", "p75"), ("bound_ms", "FLOP bound ms"),
                 ("ops", "aten ops / pass"), ("overhead_ms", "overhead floor ms"),
                 ("bound_by", "bound by"), ("device", "device"), ("batch", "batch"),
                 ("noisy", "too noisy: why")]
SETTING = ("dim", "heads", "batch", "device")   # with the model, what makes two readings comparable

# When a reading is flagged "too noisy, measure again" (it is kept, with the reason):
# - SPREAD_LIMIT: its p75 / p25 is above 1.5. On an otherwise idle device repeated calls of
#   one forward pass agree to within a few per cent, so quartiles 50 % apart mean that
#   something else had the processor during a good part of the calls.
# - SLOWDOWN_LIMIT: its median is above 2x the lowest median of the earlier readings of
#   the same model and setting. The same computation does not become twice as slow by
#   itself; steady contention (another program, a training run) does, and can leave the
#   spread narrow.
SPREAD_LIMIT = 1.5
SLOWDOWN_LIMIT = 2.0
# Untimed calls per model before its timed ones (first calls allocate memory and pick
# kernels); fewer when they take over a third of seconds_per_model (DeviceTimer.time_models).
WARMUP_CALLS = 5
ROUNDS = 3         # the timed calls are split into rounds that alternate the two models
# Timed calls of the per-op overhead probe (DeviceTimer.op_overhead; 5 untimed ones first). The
# probe's call is a few ms on a CPU, so the whole measurement takes well under a second.
OVERHEAD_REPS = 20
OVERHEAD_TRIES = 3  # readings of it at most, while they are too noisy (explorer.op_overhead)


def noise_reason(stats: dict, earlier_medians: list[float]) -> str | None:
    """Why a reading (a latency_stats dict) is too noisy to trust, or None when it is not.

    earlier_medians: the medians (ms) of earlier readings of the same model and setting."""
    reasons = []
    if stats["p25_ms"] > 0 and stats["p75_ms"] / stats["p25_ms"] > SPREAD_LIMIT:
        reasons.append(f"spread: p75/p25 = {stats['p75_ms'] / stats['p25_ms']:.2f} "
                       f"(limit {SPREAD_LIMIT})")
    if earlier_medians and stats["median_ms"] > SLOWDOWN_LIMIT * min(earlier_medians):
        reasons.append(f"slow: median {stats['median_ms'] / min(earlier_medians):.1f}x the best "
                       f"earlier reading (limit {SLOWDOWN_LIMIT:g}x)")
    return "; ".join(reasons) or None


class DepthWidthExplorer:
    """Sliders for m, n, width D, heads, batch and device; Measure times both models.

    Readable state: `.state` (the controls), `.results` (every measurement so far, newest
    last; `noisy` is None or why it is too noisy), `.message` (what the dashboard says),
    `.plot_data()` (the plotted series).

    `timer`: what measures the device (the matmul peak, the per-op overhead, op counts and
    the models' latency); default a DeviceTimer, any object with its methods will do.
    """

    def __init__(self, depth: int = 1, width: int = 4, dim: int = 64, heads: int = 4,
                 batch: int = 1, device: str | None = None, image_size: int = 32,
                 in_channels: int = 3, patch_size: int = 4, reps: int = 15,
                 seconds_per_model: float = 2.0, timer: DeviceTimer | None = None):
        self.timer = DeviceTimer() if timer is None else timer
        self.image = dict(image_size=image_size, in_channels=in_channels, patch_size=patch_size)
        self.reps, self.seconds_per_model = reps, seconds_per_model
        self.results: list[dict] = []
        self._peaks: dict[str, float] = {}
        self._overheads: dict[str, dict] = {}          # device -> timer.op_overhead(...)
        self._serial_ops: dict[tuple, tuple[int, int]] = {}  # (dim, heads, device) -> (a, b)
        style = {"description_width": "90px"}
        slider = dict(continuous_update=False, style=style, layout=w.Layout(width="330px"))
        self.depth = w.IntSlider(value=depth, min=1, max=6, description="depth m", **slider)
        self.width = w.IntSlider(value=width, min=1, max=16, description="width n", **slider)
        self.dim = w.Dropdown(options=DIMS, value=dim, description="dim D", style=style)
        self.heads = w.Dropdown(options=HEADS, value=heads, description="heads", style=style)
        self.batch = w.Dropdown(options=BATCHES, value=batch, description="batch", style=style)
        self.device = w.Dropdown(options=DEVICES, value=device or available_devices()[0],
                                 description="device", style=style)
        self.measure_button = w.Button(description="Measure", button_style="primary",
                                       icon="stopwatch", tooltip="time both models now")
        self.clear_button = w.Button(description="Clear", tooltip="forget the measurements")
        self.message_html = w.HTML()
        self.table_html = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(width="640px"))
        for control in self.controls:
            control.observe(self._on_change, names="value")
        self.measure_button.on_click(lambda _: self.measure())
        self.clear_button.on_click(lambda _: self.clear())
        self.widget = w.VBox([
            w.HBox([w.VBox([self.depth, self.width]), w.VBox([self.dim, self.heads]),
                    w.VBox([self.batch, self.device])]),
            w.HBox([self.measure_button, self.clear_button]),
            self.message_html, self.table_html, self.plot])
        self._on_change()

    # ------------------------------------------------------------------ state
    @property
    def controls(self):
        return [self.depth, self.width, self.dim, self.heads, self.batch, self.device]

    @property
    def state(self) -> dict:
        return dict(depth=self.depth.value, width=self.width.value, dim=self.dim.value,
                    heads=self.heads.value, batch=self.batch.value, device=self.device.value)

    @property
    def message(self) -> str:
        return self.message_html.value

    def problem(self) -> str | None:
        """Why the current choice cannot be measured, or None."""
        s = self.state
        if s["dim"] % s["heads"]:
            return (f"dim {s['dim']} is not divisible by {s['heads']} heads: "
                    f"choose heads in {[h for h in HEADS if s['dim'] % h == 0]}")
        if s["device"] not in available_devices():
            return (f"device '{s['device']}' is not present on this machine; "
                    f"available: {', '.join(available_devices())}")
        return None

    def model_names(self) -> tuple[str, str]:
        s = self.state
        return f"pf-{s['depth']}-{s['width']}", f"vit-{s['depth'] * s['width']}"

    def _config(self, name: str):
        s = self.state
        return model_config(name, dim=s["dim"], heads=s["heads"], **self.image)

    def rows(self) -> list[dict]:
        """The table: the two models of the current choice (analytic columns always, and
        latency once measured), then earlier measurements, newest first."""
        s, rows = self.state, []
        if self.problem() is None:
            for name in self.model_names():
                c = self._config(name)
                last = self._last(name)
                rows.append(last or dict(label=_label(name), layers=c.layers,
                                         params=_params(c), gflops=flops(c, s["batch"]) / 1e9,
                                         device=s["device"], batch=s["batch"]))
        shown = {id(r) for r in rows}
        rows += [r for r in reversed(self.results) if id(r) not in shown]
        return rows

    def _readings(self, name: str | None = None) -> list[dict]:
        """The readings so far at the current setting (of model `name`, if given), oldest first."""
        s = self.state
        return [r for r in self.results if all(r[k] == s[k] for k in SETTING)
                and name in (None, r["model"])]

    def _last(self, name: str) -> dict | None:
        readings = self._readings(name)
        return readings[-1] if readings else None

    def _on_change(self, change=None) -> None:
        problem = self.problem()
        self.measure_button.disabled = False  # stays clickable: a click explains the problem
        self._say(f"<b style='color:#b00'>{problem}</b>" if problem else
                  f"{' vs '.join(_label(n) for n in self.model_names())}: same FLOPs. "
                  f"Press <b>Measure</b> to time both on {self.state['device']}.")
        self.refresh()

    def _say(self, text: str) -> None:
        self.message_html.value = text

    # ------------------------------------------------------------------ measuring
    def peak_gflops(self, device: str) -> float:
        """The device's matmul rate (measured once per device, cached)."""
        if device not in self._peaks:
            self._peaks[device] = self.timer.matmul_gflops(device)
        return self._peaks[device]

    def op_overhead(self, device: str) -> dict:
        """The device's fixed cost of one operation (the timer's op_overhead), measured once per
        device and cached; `us_per_op` is the median, in microseconds. A reading too noisy to
        trust (`noisy`: its p75/p25 above SPREAD_LIMIT, something else had the processor) is
        measured again at the next call, OVERHEAD_TRIES readings at most, and the one with
        the lowest median is kept (contention only ever makes the probe slower)."""
        old = self._overheads.get(device)
        if old is None or (old["noisy"] and old["tries"] < OVERHEAD_TRIES):
            new = dict(self.timer.op_overhead(device, OVERHEAD_REPS))
            new["noisy"] = new["us_p25"] > 0 and new["us_p75"] / new["us_p25"] > SPREAD_LIMIT
            new["tries"] = 1 if old is None else old["tries"] + 1
            if old is not None and old["us_per_op"] <= new["us_per_op"]:
                new = dict(old, tries=new["tries"])
            self._overheads[device] = new
        return self._overheads[device]

    def serial_ops(self, dim: int, heads: int, device: str) -> tuple[int, int]:
        """(a, b): a serial ViT-L of this width dispatches a + b*L aten ops per forward pass.
        Counted once per (dim, heads, device) on ViT-1 and ViT-2 at batch 1 (cached)."""
        key = (dim, heads, device)
        if key not in self._serial_ops:
            counts = [self._count(f"vit-{L}", 1, dim, heads, device) for L in (1, 2)]
            self._serial_ops[key] = (2 * counts[0] - counts[1], counts[1] - counts[0])
        return self._serial_ops[key]

    def _count(self, name: str, batch: int, dim: int, heads: int, device: str) -> int:
        """The aten ops one forward pass of model `name` dispatches (a pass at `batch`)."""
        torch.manual_seed(0)
        config = model_config(name, dim=dim, heads=heads, **self.image)
        model = ParaFormer(config).eval().to(device)
        x = torch.zeros(batch, self.image["in_channels"], self.image["image_size"],
                        self.image["image_size"], device=device)
        return self.timer.count_ops(lambda: model(x))   # of a steady pass, after a warm one

    def measure(self) -> list[dict] | None:
        """Time Para-Former-m-n and serial ViT-(m*n); returns the two new records, or None
        (with a message on the dashboard) when the choice cannot be measured now.

        Live training runs of this kernel are held between two batches while timing (and
        go on afterwards); if one cannot be held, nothing is timed. Each record has a
        `noisy` field: None, or why the reading is too noisy to trust (noise_reason)."""
        problem = self.problem()
        if problem:
            self._say(f"<b style='color:#b00'>cannot measure: {problem}</b>")
            return None
        trainers = running_trainers()
        if trainers:
            self._say("pausing the training run in the Accuracy tab at the end of its batch ...")
        with contextlib.ExitStack() as stack:
            if not all([stack.enter_context(t.paused()) for t in trainers]):
                self._say("<b style='color:#b00'>cannot measure now: a training run is in progress in "
                          "the Accuracy tab and could not be paused (it is loading data or evaluating); "
                          "timing now would time the training too. Wait for it to finish, or Stop it, "
                          "then Measure.</b>")
                return None
            held = [t for t in trainers if t.running]   # the others ended while we waited
            new = self._time_both()
        if new is None:
            return None
        self.results.extend(new)
        pf, vit = new
        text = (f"{pf['label']}: {pf['median_ms']:.3g} ms, {vit['label']}: {vit['median_ms']:.3g} ms "
                f"(serial / parallel = {vit['median_ms'] / pf['median_ms']:.2f}x) on {pf['device']}, "
                f"batch {pf['batch']}")
        text += ". Bound by: " + ", ".join(
            f"{r['label']} {_bound_text(r)}" for r in new)
        overhead = self._overheads[pf["device"]]
        if overhead["noisy"]:
            text += (" (the per-op overhead reading was noisy" +
                     (": it is measured again at the next Measure)" if overhead["tries"] < OVERHEAD_TRIES
                      else f", {OVERHEAD_TRIES} times: the lowest is kept)"))
        noisy = [f"{r['label']}: {r['noisy']}" for r in new if r["noisy"]]
        if noisy:
            text += f". <b style='color:#b00'>Too noisy, measure again</b> ({'; '.join(noisy)})"
        if held:
            text += ". Training in the Accuracy tab was paused while timing, and goes on now"
        self._say(text)
        self.refresh()
        return new

    def _time_both(self) -> list[dict] | None:
        """The two records, timed by the timer; None (and a message) on error."""
        s = self.state
        device = torch.device(s["device"])
        self._say("measuring ...")
        self.measure_button.disabled = True
        try:
            peak = self.peak_gflops(s["device"])
            us_per_op = self.op_overhead(s["device"])["us_per_op"]
            self.serial_ops(s["dim"], s["heads"], s["device"])   # for the serial floor line
            torch.manual_seed(0)
            x = torch.randn(s["batch"], self.image["in_channels"], self.image["image_size"],
                            self.image["image_size"], device=device)
            models = {}
            for name in self.model_names():
                torch.manual_seed(0)
                models[name] = create_model(name, dim=s["dim"], heads=s["heads"], **self.image).eval().to(device)
            timings = self.timer.time_models(list(models.values()), x, warmup=WARMUP_CALLS, reps=self.reps,
                                             rounds=ROUNDS, seconds_per_model=self.seconds_per_model)
            # one more, untimed pass each, counted: a warm model (just timed) at this batch
            ops = [self.timer.count_ops(lambda m=m: m(x), warm=False) for m in models.values()]
        except Exception as err:  # shown on the dashboard, never raised into the page
            self._say(f"<b style='color:#b00'>measurement failed: {type(err).__name__}: {html.escape(str(err))}</b>")
            return None
        finally:
            self.measure_button.disabled = False
        new = []
        for (name, model), timing, n_ops in zip(models.items(), timings, ops):
            c, stats = model.config, timing.stats
            fl = flops(c, s["batch"])
            earlier = [r["median_ms"] for r in self._readings(name)]
            bound_ms = fl / (peak * 1e9) * 1e3
            lat = add_overhead_model(dict(ops=n_ops, flop_bound_ms=bound_ms), us_per_op)
            new.append(dict(model=name, label=_label(name),
                            layers=c.layers, depth=c.depth, width=c.width,
                            params=count_parameters(model), gflops=fl / 1e9,
                            warmup=timing.warmup, reps=len(timing.seconds),
                            median_ms=stats["median_ms"], p25_ms=stats["p25_ms"],
                            p75_ms=stats["p75_ms"], samples_ms=[t * 1e3 for t in timing.seconds],
                            noisy=noise_reason(stats, earlier), bound_ms=bound_ms,
                            peak_gflops=peak, ops=n_ops, us_per_op=us_per_op,
                            overhead_ms=lat["overhead_ms"], predicted_ms=lat["predicted_ms"],
                            bound_by=lat["bound_by"], **{k: s[k] for k in SETTING},
                            time=time.strftime("%H:%M:%S")))
        return new

    def clear(self) -> None:
        self.results.clear()
        self._on_change()

    # ------------------------------------------------------------------ plot
    def plot_data(self) -> dict:
        """Series for the current (dim, heads, batch, device): layers -> median ms for the
        parallel and the serial models (noisy readings included, with their reason), the
        FLOP-bound line flops / peak, and the overhead floors ops x overhead (ms): of the
        serial ViT-L for every L up to the largest measured ("floor_serial"), and of each
        measured Para-Former ("floor_parallel", its own op count; sorted by layers)."""
        s = self.state
        same = self._readings()

        def points(prefix):  # (layers, median, p25, p75, model, noisy reason or None)
            return sorted(((r["layers"], r["median_ms"], r["p25_ms"], r["p75_ms"], r["model"], r["noisy"])
                           for r in same if r["model"].startswith(prefix)), key=lambda p: p[:5])

        series = {"parallel": points("pf"), "serial": points("vit")}
        bound = []
        if same and s["device"] in self._peaks and self.problem() is None:
            top = max(r["layers"] for r in same)
            for L in range(1, top + 1):
                c = self._config(f"vit-{L}")
                bound.append((L, flops(c, s["batch"]) / (self._peaks[s["device"]] * 1e9) * 1e3))
        series["bound"] = bound
        floor_serial, floor_parallel = [], []
        overhead = self._overheads.get(s["device"])
        key = (s["dim"], s["heads"], s["device"])
        if same and overhead and self.problem() is None:
            us, top = overhead["us_per_op"], max(r["layers"] for r in same)
            if key in self._serial_ops:
                a, b = self._serial_ops[key]
                floor_serial = [(L, (a + b * L) * us / 1e3) for L in range(1, top + 1)]
            pf = {r["model"]: r for r in same if r["model"].startswith("pf") and r.get("ops")}
            floor_parallel = sorted((r["layers"], r["ops"] * us / 1e3) for r in pf.values())
        series["floor_serial"], series["floor_parallel"] = floor_serial, floor_parallel
        return series

    def refresh(self) -> None:
        self.table_html.value = html_table(self.rows(), TABLE_COLUMNS)
        data = self.plot_data()
        fig = new_figure()
        ax = fig.add_subplot()
        readings, hollow = self._readings(), "other readings of the same model (hollow)"
        for prefix, color, marker, text in (("vit", "tab:red", "s", "serial ViT-L"),
                                            ("pf", "tab:blue", "o", "Para-Former-m-n (batched)")):
            mine = [r for r in readings if r["model"].startswith(prefix)]
            line = sorted(line_readings(mine).values(), key=lambda r: r["layers"])
            others = [r for r in mine if not any(r is q for q in line)]
            if others:  # repeated readings: hollow, off the line
                ax.errorbar(*_bars(others), fmt=marker, mfc="none", color=color, alpha=0.5, capsize=2,
                            label=hollow)
                hollow = None   # one legend entry for both models
            if line:
                ax.errorbar(*_bars(line), color=color, marker=marker, capsize=3, label=text)
            for r in line:
                bad = r["noisy"] is not None
                ax.annotate(r["model"] + (" (too noisy)" if bad else ""), (r["layers"], r["median_ms"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color="#b00" if bad else "black")
        if data["bound"]:
            L, ms = zip(*data["bound"])
            ax.plot(L, ms, "k--", lw=1, label="FLOP bound (FLOPs / matmul peak)")
        for key, color, text in (("floor_serial", "tab:red", "ViT"),
                                 ("floor_parallel", "tab:blue", "Para-Former")):
            if data[key]:
                L, ms = zip(*data[key])
                ax.plot(L, ms, ":", color=color, lw=1.5, marker="." if key == "floor_parallel" else None,
                        label=f"overhead floor (ops × overhead), {text}")
        s = self.state
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # layers are whole numbers
        ax.set(xlabel="encoder layers m·n", ylabel="latency per forward pass (ms)",
               title=f"D={s['dim']}, heads={s['heads']}, batch={s['batch']}, {s['device']}")
        if data["serial"] or data["parallel"]:
            ax.legend(fontsize=8, loc="upper left")
            ax.set_ylim(bottom=0)
        else:
            ax.text(0.5, 0.5, "press Measure", ha="center", va="center", transform=ax.transAxes, color="gray")
        self.plot.value = figure_png(fig)

    def snapshot(self):
        """A static picture of the latency plot as they are now (an IPython Image): a saved
        notebook keeps it, and GitHub or nbviewer show it, where the live widget is blank."""
        return picture(self.plot.value)

    def _ipython_display_(self):
        display(self.widget)


def line_readings(readings: list[dict]) -> dict[int, dict]:
    """The reading the plot's line goes through at each layer count: the newest one not too
    noisy, or the newest of all when every one is. `readings` oldest first; the others are
    drawn hollow, off the line."""
    chosen: dict[int, dict] = {}
    for r in readings:
        old = chosen.get(r["layers"])
        if old is None or r["noisy"] is None or old["noisy"] is not None:
            chosen[r["layers"]] = r
    return chosen


def _bars(readings: list[dict]):
    """x, y and the quartile error bars of readings, for ax.errorbar."""
    return ([r["layers"] for r in readings], [r["median_ms"] for r in readings],
            [[r["median_ms"] - r["p25_ms"] for r in readings],
             [r["p75_ms"] - r["median_ms"] for r in readings]])


def _label(name: str) -> str:
    if name.startswith("vit-"):
        return f"ViT-{name[4:]} (serial)"
    m, n = name[3:].split("-")
    return f"Para-Former-{m}-{n}"


def _bound_text(record: dict) -> str:
    """Which term of t ~ max(ops x overhead, FLOPs / peak) is the larger for a record."""
    if record.get("bound_by") is None:
        return "(no op count)"
    ov, fl = record["overhead_ms"], record["bound_ms"]
    if record["bound_by"] == "overhead":
        return f"overhead (floor {ov:.3g} ms &ge; FLOP bound {fl:.3g} ms)"
    return f"FLOPs (FLOP bound {fl:.3g} ms &gt; floor {ov:.3g} ms)"


def _params(config) -> int:
    with torch.device("meta"):  # count without allocating weights
        return count_parameters(ParaFormer(config))
