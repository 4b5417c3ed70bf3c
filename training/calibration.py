"""Temperature scaling per exit (Guo et al., ICML 2017), fitted on the validation split.

One scalar T > 0 per exit minimises the negative log-likelihood of softmax(logits / T); argmax is
unchanged, confidences become honest, which is what an exit threshold compares against.
"""

from __future__ import annotations

import numpy as np
import torch

from core.exits import confidence_and_class, expected_calibration_error

T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The temperature minimising NLL on (logits, labels); optimised in log-space with LBFGS."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    # A near-constant or hopeless exit can drive T to extremes; keep it in a range where the
    # confidences still order samples (and where a threshold can still be met).
    return float(np.clip(t, T_MIN, T_MAX)) if np.isfinite(t) else 1.0


def calibrate_exits(logits_per_exit: list[np.ndarray], labels: np.ndarray) -> dict:
    """Temperatures and ECE before/after for every exit."""
    out = {"temperatures": [], "ece_before": [], "ece_after": []}
    for logits in logits_per_exit:
        t = fit_temperature(logits, labels)
        for key, temp in (("ece_before", 1.0), ("ece_after", t)):
            conf, pred = confidence_and_class(logits, temp)
            out[key].append(expected_calibration_error(conf, pred == labels))
        out["temperatures"].append(t)
    return out
