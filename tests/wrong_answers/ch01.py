"""Wrong answers to the exercises of notebook 01."""
import torch

WRONG = {
    "1.1": [
        lambda x, w, theta, alpha: torch.tanh(x @ w.T + theta).sum(1),      # alpha forgotten
        lambda x, w, theta, alpha: (x @ w.T + theta) @ alpha,               # no activation
        lambda x, w, theta, alpha: torch.tanh(x @ w.T + theta) @ alpha[:, None],  # shape (B, 1)
        lambda x, w, theta, alpha: torch.relu(x @ w.T + theta) @ alpha,     # another sigma
    ],
}
