"""Training Para-Former: the loop (`engine`), a live plot for notebooks (`live`) and the
`duat train` command (`cli`). docs/method.md section 5.

    from duat.training import TrainConfig, fit, evaluate
"""
from duat.training.engine import (FitResult, TrainConfig, TrainEvent, evaluate, fit,
                                  load_checkpoint, predict)

__all__ = ["FitResult", "TrainConfig", "TrainEvent", "evaluate", "fit", "load_checkpoint",
           "predict"]
