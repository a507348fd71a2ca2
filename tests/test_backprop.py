"""The hand-written backward pass (ae_core.backprop) against autograd, to the bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ae_core.backprop import set_gradients
from ae_core.losses import feature_errors
from ae_core.network import Autoencoder


def autograd_gradients(module: Autoencoder, inputs: torch.Tensor, target: torch.Tensor, loss: str,
                       output: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in module.parameters():
        p.grad = None
    value = feature_errors(module(inputs), target, loss, output).mean()
    value.backward()
    return value.detach(), [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize(("loss", "output"), [("mse", "identity"), ("mse", "sigmoid"), ("bce", "sigmoid")])
@pytest.mark.parametrize("rows", [1, 7, 256, 512])
def test_gradients_equal_autograds_to_the_bit(loss: str, output: str, rows: int) -> None:
    rng = np.random.default_rng(rows)
    for n_features, hidden, bottleneck in ((8, (32, 16), 3), (5, (), 2), (24, (12,), 4)):
        torch.manual_seed(rows)
        module = Autoencoder(n_features, hidden, bottleneck, output)
        data = rng.normal(size=(rows, n_features))
        target = torch.from_numpy((1 / (1 + np.exp(-data)) if output == "sigmoid" else data).astype(np.float32))
        noisy = target + 0.1 * torch.randn(target.shape)  # a denoising step: inputs differ from targets
        for inputs in (target, noisy):
            expected_loss, expected = autograd_gradients(module, inputs, target, loss, output)
            for p in module.parameters():
                p.grad = None
            got_loss = set_gradients(module, inputs, target, loss, output)
            assert torch.equal(got_loss, expected_loss)
            for p, want in zip(module.parameters(), expected):
                assert p.grad.shape == want.shape and p.grad.is_contiguous()
                assert torch.equal(p.grad, want), (loss, output, rows, n_features)


def test_a_detector_learns_the_same_bits_as_with_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores, flags and weights after warm-up, learning and an accepted shift, with the
    hand-written gradients and with autograd's."""
    from ae_core import AutoencoderDetector, DetectorConfig
    from ae_core import detector as detector_module

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    X[2000:] += 4.0  # a shift that stays: flagged, then accepted and learned
    config = DetectorConfig(n_channels=6, warmup=300, fit_steps=16, denoise_sigma=0.05)

    def run() -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
        det = AutoencoderDetector(config)
        res = det.process_many(X)
        return res.score, res.is_anomaly, [p.detach().clone() for p in det.module.parameters()]

    ours = run()

    def through_autograd(module: Autoencoder, inputs: torch.Tensor, target: torch.Tensor, loss: str,
                         output: str) -> torch.Tensor:
        value, grads = autograd_gradients(module, inputs, target, loss, output)
        for p, g in zip(module.parameters(), grads):
            p.grad = g
        return value

    monkeypatch.setattr(detector_module, "set_gradients", through_autograd)
    theirs = run()
    assert ours[1].sum() > 0 and ours[1][2000:].any()
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    for a, b in zip(ours[2], theirs[2]):
        assert torch.equal(a, b)


def test_the_direct_adam_step_moves_the_weights_as_the_optimizer_does() -> None:
    from ae_core.backprop import adam_step

    torch.manual_seed(0)
    ours, theirs = Autoencoder(8, (32, 16), 3, "identity"), Autoencoder(8, (32, 16), 3, "identity")
    theirs.load_state_dict(ours.state_dict())
    opt_ours = torch.optim.Adam(ours.parameters(), lr=3e-3, fused=True)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=3e-3, fused=True)
    for step in range(6):
        x = torch.randn(64, 8)
        for module in (ours, theirs):
            set_gradients(module, x, x, "mse", "identity")
        adam_step(opt_ours)
        opt_theirs.step()
        if step == 2:  # moments put back from a saved state, as the warm-up's cross-fitting does
            saved = opt_ours.state_dict()
            opt_ours.load_state_dict(copy.deepcopy(saved))
            opt_theirs.load_state_dict(copy.deepcopy(saved))
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b), step
    assert int(opt_ours.state_dict()["state"][0]["step"]) == 6
