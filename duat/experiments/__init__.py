"""The paper's accuracy experiments as data, and `duat reproduce` to run them.

docs/method.md section 5 reports that (1) more parallel layers generally improve accuracy, for
Para-Former-1-n and Para-Former-m-n, (3) data scale and diversity strongly influence the
results, and (4) a pre-trained serial ViT helps Para-Former when data is limited. The
first four experiments below are sweeps (duat.experiments.sweeps): a `Sweep` each, a list
of models, a list of data variants (subsets), seeds and a training budget, for two
profiles. The fifth is the fine-tuning experiment (duat.experiments.finetune).

    accuracy-vs-width   Para-Former-1-n, n = 1, 2, 4, 8, 12, next to ViT-n. Para-Former-1-n
                        has n encoder layers side by side, ViT-n the same n layers in
                        series: exactly the same parameter count (ViT-1 = Para-Former-1-1).
    accuracy-vs-depth   the m x n grid Para-Former-m-n, next to ViT-L with L = m * n layers
                        (again the same parameter count).
    data-scale          the width sweep trained on 10 %, 25 %, 50 %, 100 % of the training
                        set (stratified), every run with about the same number of optimisation
                        steps (the plan's `steps`, rounded up to whole epochs).
    data-diversity      the width sweep on 2, 5, 10 classes with the same number of training
                        images; accuracy is also reported above chance, (acc - 1/k) / (1 - 1/k).
    finetune            a pre-trained serial ViT's blocks in Para-Former-m-n layouts, against
                        the same architectures from scratch, with a few examples per class.
    progressive         the follow-up paper (docs/method.md section 7): the loss of every prefix
                        model under three training schedules, compression by keeping the best
                        branches, and expansion for a second task (duat.experiments.progressive).
    composition         what one parallel stage cannot compose (docs/method.md section 10):
                        induction, MQAR and a copy control, and a character model, for GPT-L
                        and Para-Former-m-n of equal size (duat.experiments.composition).

Profiles: `quick` (bundled digits, tiny models with 4x4 patches, one CPU thread, a few
seeds; each experiment fits in minutes on a 2-core CPU) and `full` (CIFAR-10, the 'small'
models, meant for a GPU). A run writes its results (results.json, CSV tables, figures) into
<name>/ (quick) or <name>-full/ of duat.locations.output_dir(): in a source checkout
duat/results/, where the committed quick results live (so regenerating them needs
--overwrite), for an installed kit ./results/. `load_results(name)` reads the committed
quick results (duat.locations.committed), which ship with the package.

    run_experiment("data-scale", "quick", seeds=[0], out="/tmp/rerun")
    results = load_results("data-scale")
    print(format_summary(results)); plot_results(results)
    compare_results(load_results("/tmp/rerun"), results)

    duat reproduce --list
    duat reproduce accuracy-vs-width --quick
    duat reproduce data-scale --quick --out /tmp/rerun --compare data-scale
    torchrun --nproc-per-node 2 -m duat reproduce accuracy-vs-width --full
                        # the sweeps only: every run data parallel over the processes (DDP),
                        # rank 0 writes; the other experiments run in one process

The package: `runs` (what every experiment shares: what an experiment is, folders,
statistics over seeds, progress, the message of an interrupted run, writing a finished
run), `sweeps`, `finetune`, `progressive`, `composition`, `plots` (figures and tables),
`catalog` (all seven by name: the functions above), `cli` (the `duat reproduce` command),
and `claims` with `verdicts` (the claims table, `duat claims`).
"""
from duat.experiments.catalog import (EXPERIMENTS, compare_results, format_summary, load_results,
                                      plot_results, run_experiment, write_results)
from duat.experiments.runs import default_output_dir

__all__ = ["EXPERIMENTS", "compare_results", "default_output_dir", "format_summary", "load_results",
           "plot_results", "run_experiment", "write_results"]
