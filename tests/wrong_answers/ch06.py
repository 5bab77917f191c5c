"""Wrong answers to the exercises of notebook 06."""
import math

import torch


def _lr_no_plus_one(step, total_steps, warmup_steps, lr, min_lr):     # warm-up one step late
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def _lr_cosine_from_zero(step, total_steps, warmup_steps, lr, min_lr):  # cosine ignores the warm-up
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / total_steps))


def _lr_no_floor(step, total_steps, warmup_steps, lr, min_lr):          # min_lr forgotten
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def _naive_softmax(logits, labels):                                     # exp overflows
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    return -p[torch.arange(len(labels)), labels].log().mean(), (p.argmax(1) == labels).float().mean()


WRONG = {
    "6.1": [_lr_no_plus_one, _lr_cosine_from_zero, _lr_no_floor],
    "6.2": [
        lambda logits, labels: (torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                                (logits.argmax(1) == labels).float().mean()),      # summed loss
        lambda logits, labels: (torch.nn.functional.cross_entropy(logits, labels),
                                (logits.argmax(1) == labels).sum()),               # a count
        lambda logits, labels: (-logits.softmax(1)[torch.arange(len(labels)), labels].mean(),
                                (logits.argmax(1) == labels).float().mean()),      # no log
        _naive_softmax,
    ],
    "6.3": [
        lambda pred, true, k: torch.bincount(pred * k + true, minlength=k * k).reshape(k, k),  # transposed
        lambda pred, true, k: torch.bincount(true * (int(max(pred.max(), true.max())) + 1) + pred).reshape(
            int(max(pred.max(), true.max())) + 1, -1),                             # size from the labels
        lambda pred, true, k: torch.diag(torch.bincount(true[pred == true], minlength=k)),  # diagonal only
    ],
}
