"""Reconstruction errors and the weight penalty, as plain functions of tensors.

The training objective of a mini-batch X of N events and n features is::

    mean over events and features of e(x, x_hat)  +  lambda * P(theta)

with ``e`` the squared error (MSE) or the binary cross-entropy (BCE), and ``P`` the sum of squares
(``l2``) or of absolute values (``l1``) of every weight and bias of encoder and decoder.

Relation to the optimiser's weight decay: the gradient of ``lambda * sum(theta**2)`` is
``2 * lambda * theta``, which is exactly what ``torch.optim.SGD(weight_decay=2 * lambda)`` or
``torch.optim.Adam(weight_decay=2 * lambda)`` add to each gradient (coupled L2). It is *not*
AdamW's decoupled decay, which bypasses Adam's scaling. We keep the optimiser's weight decay at
zero and add the penalty's gradient ourselves (:func:`add_penalty_gradient`), which equals
back-propagating :func:`penalty` but costs one fused operation instead of a graph over every
parameter; ``tests/test_losses.py`` checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.nn import functional as F

from ae_core.network import activate


def feature_errors(logits: torch.Tensor, target: torch.Tensor, loss: str, output: str) -> torch.Tensor:
    """Per event and per feature reconstruction error, shape ``(N, n)``."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (activate(logits, output) - target).square()


def event_errors(logits: torch.Tensor, target: torch.Tensor, loss: str, output: str) -> torch.Tensor:
    """Per event reconstruction error (mean over features), shape ``(N,)``: the anomaly score."""
    return feature_errors(logits, target, loss, output).mean(dim=1)


def penalty(parameters: Iterable[torch.Tensor], kind: str, weight: float) -> torch.Tensor:
    """``weight * sum(theta**2)`` (l2) or ``weight * sum(|theta|)`` (l1) over all parameters."""
    params = list(parameters)
    if kind == "l2":
        total = sum((p.square().sum() for p in params), torch.zeros(()))
    else:
        total = sum((p.abs().sum() for p in params), torch.zeros(()))
    return weight * total


def add_penalty_gradient(parameters: Sequence[torch.Tensor], kind: str, weight: float) -> None:
    """Add the gradient of :func:`penalty` to each parameter's ``.grad`` in place."""
    if weight == 0.0:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    params = [p.detach() for p in parameters if p.grad is not None]
    if kind == "l2":
        torch._foreach_add_(grads, params, alpha=2.0 * weight)
    else:
        torch._foreach_add_(grads, torch._foreach_sign(params), alpha=weight)
