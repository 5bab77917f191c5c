"""Exercises of notebook 06 (training Para-Former, docs/method.md sections 4 and 5): the
learning-rate schedule, the loss and accuracy `evaluate` reports, and the confusion matrix."""
from __future__ import annotations

import math

import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import nn

from duat.exercises.core import (Wrong, as_number, as_numbers, as_tensor, call, cases,
                                 compare, exercise, same_number)
from duat.training.engine import evaluate, lr_at


# ----------------------------------------------------------------------------- 6.1

def _warmup_no_plus_one(step, total, warm, lr, min_lr):
    if step < warm:
        return lr * step / warm
    return lr_at(step, total, warm, lr, min_lr)


def _cosine_over_all_steps(step, total, warm, lr, min_lr):
    if step < warm:
        return lr * (step + 1) / warm
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / total))


def _min_lr_not_subtracted(step, total, warm, lr, min_lr):
    if step < warm:
        return lr * (step + 1) / warm
    return min_lr + 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


def _no_min_lr(step, total, warm, lr, min_lr):
    return lr_at(step, total, warm, lr, 0.0)


@exercise("6.1", "the warm-up + cosine learning rate",
          "a function lr_at_step(step, total_steps, warmup_steps, lr, min_lr) returning the "
          "learning rate (a number) at step 0 <= step < total_steps: linear warm-up "
          "lr * (step + 1) / warmup_steps, then a cosine from lr down to min_lr")
def lr_schedule(answer) -> str:
    for i, g in cases():
        total = int(torch.randint(40, 400, (1,), generator=g))
        warm = 0 if i == 4 else int(torch.randint(1, total // 4, (1,), generator=g))
        lr = float(10 ** torch.empty(1).uniform_(-4, -2, generator=g))
        min_lr = 0.0 if i == 2 else lr * float(torch.rand(1, generator=g)) * 0.2
        steps = sorted({0, max(warm - 1, 0), warm, total // 2, total - 1,
                        *torch.randint(0, total, (12,), generator=g).tolist()})
        case = (f"case {i}: total_steps {total}, warmup_steps {warm}, lr {lr:.3g}, "
                f"min_lr {min_lr:.3g}")
        got = torch.tensor([as_number(call(answer, s, total, warm, lr, min_lr, case=f"{case}, step {s}"),
                                    f"lr_at_step({s}, ...)") for s in steps], dtype=torch.float64)
        expected = torch.tensor([lr_at(s, total, warm, lr, min_lr) for s in steps], dtype=torch.float64)

        def formula(f):
            return lambda: torch.tensor([f(s, total, warm, lr, min_lr) for s in steps], dtype=torch.float64)
        compare(got, expected, case=f"{case}, steps {steps}", what="the learning rates",
                atol=1e-12, rtol=1e-9, mistakes=[
                    (formula(_warmup_no_plus_one), "the warm-up is lr * (step + 1) / warmup_steps: "
                     "step 0 already takes a small step, and the last warm-up step reaches lr."),
                    (formula(_cosine_over_all_steps), "the cosine runs over the steps after the "
                     "warm-up: progress = (step - warmup_steps) / (total_steps - warmup_steps)."),
                    (formula(_min_lr_not_subtracted), "the cosine spans lr - min_lr: "
                     "min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * progress))."),
                    (formula(_no_min_lr), "min_lr is the floor the cosine ends at; it is missing."),
                ], hint="print your schedule at step 0, warmup_steps - 1, warmup_steps and "
                        "total_steps - 1, and compare with the formula above the exercise.")
    return "5 unseen schedules (one without warm-up, one with min_lr = 0), 15-17 steps each"


# ----------------------------------------------------------------------------- 6.2

@exercise("6.2", "mean cross-entropy and accuracy of logits",
          "a function loss_and_accuracy(logits, labels) returning (mean cross-entropy, accuracy) "
          "as two numbers, for logits (B, K) and integer labels (B,)")
def loss_and_accuracy(answer) -> str:
    for i, g in cases():
        B, K = 6 + 5 * i, 2 + 2 * i
        scale = 40.0 if i == 5 else 3.0      # the last case: logits too large for a plain exp
        logits = torch.randn(B, K, generator=g) * scale
        labels = torch.randint(0, K, (B,), generator=g)
        case = f"case {i}: logits of shape ({B}, {K})" + (" with large entries" if i == 5 else "")
        loss, acc = as_numbers(call(answer, logits, labels, case=case), 2, "the result")
        ref = evaluate(nn.Identity(), [(logits, labels)])   # the kit's own loss and accuracy
        logp = logits.double().log_softmax(1)
        if not math.isfinite(loss):
            raise Wrong(f"the loss is {loss} on {case}; expected {ref['loss']:.6g}.",
                        "exp overflows for large logits: use log_softmax, or subtract each row's "
                        "maximum before exp (log-sum-exp).")
        same_number(loss, ref["loss"], case=case, what="the loss", rel=1e-5, mistakes=[
            (ref["loss"] * B, "the loss is the mean over the batch, not the sum."),
            (float(-logits.double().softmax(1).gather(1, labels[:, None]).mean()),
             "cross-entropy is minus the *log* of the probability of the true class."),
            (float(-logits.double().log_softmax(0).gather(1, labels[:, None]).mean()),
             "softmax runs over the classes (dim 1), not over the batch (dim 0)."),
            (float(-logp.mean()), "take each row's log-probability at its true label only "
             "(gather), not the mean over all classes."),
        ])
        correct = int((logits.argmax(1) == labels).sum())
        if not math.isfinite(acc):
            raise Wrong(f"the accuracy is {acc} on {case}; expected {ref['accuracy']:.6g}.",
                        "the accuracy is the fraction of rows whose argmax equals the label.")
        same_number(acc, ref["accuracy"], case=case, what="the accuracy", rel=1e-6, mistakes=[
            (float(correct), "accuracy is a fraction: the number correct divided by B."),
            (1 - ref["accuracy"], "that is the error rate: count where argmax equals the label."),
            (float((logits.argmin(1) == labels).double().mean()), "the prediction is the argmax "
             "of the logits, not the argmin."),
        ])
    return "5 unseen batches (one with logits of size 40 and more)"


# ----------------------------------------------------------------------------- 6.3

@exercise("6.3", "the confusion matrix",
          "a function confusion(pred, true, num_classes) returning the (num_classes, "
          "num_classes) matrix C with C[i, j] = number of examples of true class i predicted "
          "as j, for integer tensors pred (N,) and true (N,)")
def confusion(answer) -> str:
    for i, g in cases():
        K, N = 3 + i, 20 + 15 * i
        top = K - 1 if i in (2, 4) else K   # two cases: the last class never occurs at all
        true = torch.randint(0, top, (N,), generator=g)
        pred = torch.where(torch.rand(N, generator=g) < 0.6, true,
                           torch.randint(0, top, (N,), generator=g))
        case = f"case {i}: {N} examples, {K} classes" + (f" (class {K - 1} absent)" if top < K else "")
        got = call(answer, pred, true, K, case=case)
        expected = torch.as_tensor(sk_confusion_matrix(true.numpy(), pred.numpy(), labels=range(K)))
        got_t = as_tensor(got, "C")
        if got_t.dim() == 2 and got_t.shape != expected.shape:
            raise Wrong(f"the matrix has shape {tuple(got_t.shape)} on {case}; expected "
                        f"{tuple(expected.shape)}.", "the size is num_classes, even where a class "
                        "never occurs: do not infer it from the largest label seen.")
        compare(got, expected, case=case, what="C", atol=0, rtol=0, mistakes=[
            (lambda: expected.T, "rows are the true class, columns the prediction: C[true, pred]; "
             "yours is transposed."),
            (lambda: torch.diag(torch.diag(expected)), "count every example, not only the correct "
             "ones: the off-diagonal entries are the confusions."),
            (lambda: expected / expected.sum(1, keepdim=True).clamp(min=1), "C holds counts, "
             "not fractions of each row."),
        ])
    return "5 unseen sets of predictions (two with a class that never occurs)"
