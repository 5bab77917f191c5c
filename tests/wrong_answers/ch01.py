"""Wrong answers to the exercises of notebook 01."""
import torch

WRONG = {
    "1.1": [
        lambda x, w, theta, alpha: torch.tanh(x @ w.T + theta).sum(1),      # alpha forgotten
        lambda x, w, theta, alpha: (x @ w.T + theta) @ alpha,               # no activation
        lambda x, w, theta, alpha: torch.tanh(x @ w.T + theta) @ alpha[:, None],  # shape (B, 1)
        lambda x, w, theta, alpha: torch.relu(x @ w.T + theta) @ alpha,     # another sigma
    ],
    "1.2": [
        lambda x, y, w, theta: torch.tanh(x @ w.T + theta).T @ y,           # only Phi.T y
        lambda x, y, w, theta: torch.linalg.solve(torch.tanh(x @ w.T + theta)[:w.shape[0]],
                                                  y[:w.shape[0]]),           # interpolates N points
        lambda x, y, w, theta: torch.linalg.lstsq(torch.tanh(x @ w.T + theta),
                                                  y[:, None]).solution,      # shape (N, 1)
        lambda x, y, w, theta: torch.linalg.lstsq(x @ w.T + theta, y[:, None]).solution[:, 0],  # no tanh
    ],
}
