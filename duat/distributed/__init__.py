"""Para-Former on several processes with torch.distributed, launched by torchrun.

    torchrun --nproc-per-node 2 -m duat train --model pf-1-8     # data parallel (DDP)
    torchrun --nproc-per-node 2 -m duat bench --impl pf-branch-parallel

Two ways to use N processes (docs/method.md section 8):

- branch parallelism (duat.distributed.branch_parallel): every rank keeps a share of each
  stage's n branches; one sum all-reduce per stage gives every rank y = x + sum_i f_i(x).
  It cuts a single forward pass's latency when the branch compute outweighs the
  all-reduce.
- data parallelism (duat.distributed.process and duat.training.fit): every rank keeps the
  whole model and takes its rows of each global batch; DDP averages the gradients.

gloo on a CPU, NCCL on GPUs (one rank per GPU), chosen by `setup()`. Whether W processes
ended with the one-process weights: `weight_gap` (duat.distributed.agreement).
"""
from duat.distributed.agreement import DDP_TOLERANCE, WeightGap, weight_gap
from duat.distributed.branch_parallel import (SPLITS, BranchParallelStage, branch_parallel,
                                       copy_to_ranks, gather_state_dict, load_split,
                                       local_parameters, save_checkpoint, split_branches,
                                       sum_over_ranks)
from duat.distributed.process import (Context, DistributedError, ShardedLoader, launched,
                                      launched_world, run_in_group, setup, teardown,
                                      timeout_s)

__all__ = ["DDP_TOLERANCE", "SPLITS", "BranchParallelStage", "Context", "DistributedError", "ShardedLoader",
           "branch_parallel", "copy_to_ranks", "gather_state_dict", "launched", "launched_world",
           "load_split",
           "local_parameters", "run_in_group", "save_checkpoint", "setup", "split_branches", "sum_over_ranks",
           "teardown", "timeout_s", "WeightGap", "weight_gap"]
