"""Reconstruction errors and the penalty against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ae_core import AutoencoderDetector, DetectorConfig
from ae_core.losses import add_penalty_gradient, event_errors, feature_errors, penalty
from ae_core.network import Autoencoder


def test_mse_per_event_is_mean_squared_difference() -> None:
    out = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    got = event_errors(out, target, "mse", "identity")
    assert got.tolist() == pytest.approx([(0 + 4 + 9) / 3, 1.0])


def test_bce_per_event_matches_formula() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [0.25, 1.0]])
    p = 1 / (1 + np.exp(-logits.numpy()))
    t = target.numpy()
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)
    got = event_errors(logits, target, "bce", "sigmoid")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_mse_with_sigmoid_output_squares_the_probability() -> None:
    logits, target = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    assert feature_errors(logits, target, "mse", "sigmoid").item() == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_penalty_equals_formula_over_every_weight_and_bias(kind: str) -> None:
    net = Autoencoder(6, (5, 4), 2, "identity")
    params = list(net.parameters())
    assert len(params) == 12  # 6 Linear layers, weights and biases, encoder and decoder
    values = np.concatenate([p.detach().numpy().ravel() for p in params])
    expected = 0.01 * (np.square(values).sum() if kind == "l2" else np.abs(values).sum())
    assert penalty(params, kind, 0.01).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_added_gradient_equals_backpropagated_penalty(kind: str) -> None:
    net = Autoencoder(4, (3,), 2, "identity")
    params = list(net.parameters())
    penalty(params, kind, 0.05).backward()
    autograd = [p.grad.clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    add_penalty_gradient(params, kind, 0.05)
    for a, b in zip(autograd, params):
        torch.testing.assert_close(a, b.grad)


def test_training_step_minimises_loss_plus_penalty() -> None:
    det = AutoencoderDetector(DetectorConfig(n_channels=3, penalty_weight=0.5, learning_rate=0.01, memory_size=0))
    before = np.concatenate([p.detach().numpy().ravel() for p in det.module.parameters()])
    det.learn_many(np.zeros((8, 3)))  # zero inputs: the data loss pulls little, the penalty shrinks weights
    after = np.concatenate([p.detach().numpy().ravel() for p in det.module.parameters()])
    assert math.fsum(np.square(after)) < math.fsum(np.square(before))


def test_network_shape_and_bottleneck() -> None:
    net = Autoencoder(8, (16, 6), 3, "sigmoid")
    x = torch.rand(1, 8)  # a batch of one works (no BatchNorm)
    assert net.encode(x).shape == (1, 3)
    out = net.reconstruct(x)
    assert out.shape == (1, 8) and ((out > 0) & (out < 1)).all()
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
