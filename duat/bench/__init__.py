"""Latency against depth: serial ViT-L against Para-Former-1-L, on a roofline (docs/method.md sections 4-5).

    from duat.bench import BenchSpec, run_benchmark, format_table, plot_benchmark
    results = run_benchmark(BenchSpec(layers=(1, 4, 12), batches=(1,)))
    print(format_table(results))

- duat.bench.harness: the spec, the models (CUDA graphs, torch.compile variants), the
  memory check, run_benchmark.
- duat.bench.timing: per-call timing (CUDA events / perf_counter), latency_stats, the
  interleaved rounds, the probes (the matmul peak, the fixed cost per operation, the memory
  bandwidth) and the op count.
- duat.bench.records: BenchRecord, one timed case, and add_roofline.
- duat.bench.report: the table, the targets (TARGETS, check_targets), results.json / .csv /
  .png, the plot, comparing a rerun with a saved run, and finding saved runs (results_root:
  the committed ones, which ship with the kit; run_roots, list_runs, latest_run,
  load_benchmark).
- duat.bench.regime: the latency regime map of a sweep over token width D, n and batch
  (`duat bench --preset regime`): the ratios, where the flat-latency claim holds, the
  model t = max(ops x overhead, FLOPs / peak) against the measurements, the heat maps.
- duat.bench.decode, decode_run, decode_model: per-token decode latency with a KV cache,
  GPT-n against causal Para-Former-1-n and HF GPT-2 (`duat bench --preset decode`), on
  t = max(ops x tau, bytes / bandwidth, FLOPs / peak); its grids, targets, maps and files.
- duat.bench.cli: the `duat bench` command (`add_arguments`, `run`, re-exported here).
"""
from duat.bench.cli import PRESETS, add_arguments, run, spec_from_args
from duat.bench.decode import DECODE_PRESETS, DecodeRecord, DecodeSpec, decode_cost
from duat.bench.decode_model import (DECODE_FILES, check_decode_targets, decode_flat_limit,
                                     decode_grid, decode_model_error, format_decode_maps,
                                     format_decode_table, format_decode_targets, is_decode,
                                     latest_decode_run, load_decode_run, plot_decode_map,
                                     plot_decode_model, save_decode_results)
from duat.bench.decode_run import run_decode
from duat.bench.harness import (IMPLEMENTATIONS, BenchSpec, build_model, estimate_bytes,
                                run_benchmark, timm_available)
from duat.bench.records import BenchRecord, add_roofline
from duat.bench.regime import (FLAT_LIMIT, boundary, claim_cells, format_regime, is_regime,
                               model_error, plot_model, plot_regime, regime_grid)
from duat.bench.report import (REGIME_FILES, RESULT_FILES, TARGETS, Target, check_targets,
                               compare_runs, find, format_comparison, format_table,
                               format_targets, is_quick, latest_run, list_runs,
                               load_benchmark, plot_benchmark, records_csv, results_root,
                               run_roots, save_benchmark)
from duat.bench.timing import (DTYPES, VARIANTS, add_overhead_model, count_ops, latency_ratio,
                               latency_stats, make_callable, matmul_peak, memory_bandwidth,
                               op_overhead, time_calls)

__all__ = [
    "BenchRecord", "BenchSpec", "DECODE_FILES", "DECODE_PRESETS", "DTYPES", "DecodeRecord",
    "DecodeSpec", "FLAT_LIMIT", "IMPLEMENTATIONS", "PRESETS", "REGIME_FILES", "RESULT_FILES",
    "TARGETS", "Target", "VARIANTS",
    "add_arguments", "add_overhead_model", "add_roofline", "boundary", "build_model",
    "check_decode_targets", "check_targets", "claim_cells", "compare_runs", "count_ops",
    "decode_cost", "decode_flat_limit", "decode_grid", "decode_model_error", "estimate_bytes",
    "find", "format_comparison", "format_decode_maps", "format_decode_table",
    "format_decode_targets", "format_regime", "format_table", "format_targets", "is_decode",
    "is_quick", "is_regime", "latency_ratio", "latency_stats", "latest_decode_run",
    "latest_run", "list_runs", "load_benchmark", "load_decode_run", "make_callable",
    "matmul_peak", "memory_bandwidth", "model_error", "op_overhead", "plot_benchmark",
    "plot_decode_map", "plot_decode_model", "plot_model", "plot_regime", "records_csv",
    "regime_grid", "results_root", "run", "run_benchmark", "run_decode", "run_roots",
    "save_benchmark", "save_decode_results", "spec_from_args", "time_calls", "timm_available",
]
