"""One event's reconstruction error in NumPy, for river's ``score_one``.

A torch call costs several microseconds before any arithmetic, more than the arithmetic of a
small network on one event. :class:`SingleEventForward` is a frozen copy of the network and the
scaling as float32 NumPy arrays that runs one event with a few NumPy calls per layer:

* each layer's bias is an extra weight column, read against a constant 1 kept at the end of
  every layer's input buffer, so a layer is one ``dot`` (and one ``maximum`` for ReLU);
* the linear bottleneck (encoder's last layer, decoder's first) is folded into one matrix;
* every intermediate lives in a buffer allocated once.

The arithmetic is the float32 arithmetic of the torch path up to rounding (the bottleneck fold
and the order of the sums); ``tests/test_detector_contract.py`` holds them to 1e-5. It is a
snapshot: the detector drops it whenever its weights or its scaling change. Not thread-safe
(the buffers are reused), as no river estimator is.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ae_core.network import Autoencoder


class SingleEventForward:
    def __init__(self, module: Autoencoder, affine: tuple[np.ndarray, np.ndarray, float, float],
                 loss: str, output_activation: str) -> None:
        shift, scale, low, high = affine
        self.shift, self.scale = shift, scale
        self.clipped = bool(np.isfinite(low) or np.isfinite(high))
        # ufuncs read an array operand faster than a Python float they must convert first
        self.low, self.high = np.full(len(shift), low), np.full(len(shift), high)
        self.bce = loss == "bce"
        self.sigmoid = output_activation == "sigmoid"
        layers = _folded_layers(module)
        # input buffer of each layer: its values, then a constant 1 that meets the bias column
        self.inputs = [_with_one(weight.shape[1]) for weight, _ in layers]
        self.layers = []
        for i, (weight, relu) in enumerate(layers):
            last = i + 1 == len(layers)
            out = np.empty(weight.shape[0], dtype=np.float32) if last else self.inputs[i + 1][:-1]
            zeros = np.zeros(len(out), dtype=np.float32) if relu else None
            self.layers.append((np.ascontiguousarray(weight, dtype=np.float32), self.inputs[i], out, zeros))
        self.output = self.layers[-1][2]
        self.target = self.inputs[0][:-1]
        self.scaled = np.empty(len(self.shift))

    def error(self, x: np.ndarray) -> float:
        """Mean per-feature error (MSE or BCE, as :func:`ae_core.losses.feature_errors`) of one raw
        model-input vector ``x`` (float64, shape ``(n_features,)``)."""
        scaled = self.scaled
        np.subtract(x, self.shift, out=scaled)
        np.divide(scaled, self.scale, out=scaled)
        if self.clipped:
            np.maximum(scaled, self.low, out=scaled)  # np.clip's Python wrapper costs more
            np.minimum(scaled, self.high, out=scaled)
        self.target[:] = scaled
        dot, maximum = np.dot, np.maximum
        for weight, inputs, out, zeros in self.layers:
            dot(weight, inputs, out=out)
            if zeros is not None:  # ReLU
                maximum(out, zeros, out=out)
        h, target = self.output, self.target
        if self.bce:  # binary cross-entropy with logits, computed stably
            errors = np.maximum(h, 0.0) - h * target + np.log1p(np.exp(-np.abs(h)))
            return float(errors.sum(dtype=np.float64)) / len(h)
        recon = 1.0 / (1.0 + np.exp(-h)) if self.sigmoid else h
        diff = np.subtract(recon, target, out=h)
        return float(np.dot(diff, diff)) / len(h)


def _folded_layers(module: Autoencoder) -> list[tuple[np.ndarray, bool]]:
    """``(weight with the bias as its last column, ReLU after)`` per layer, float64, with every
    run of layers without an activation between them multiplied into one."""
    modules = [*module.encoder, *module.decoder]
    layers: list[tuple[np.ndarray, bool]] = []
    linear_before = False
    for i, layer in enumerate(modules):
        if not isinstance(layer, nn.Linear):
            continue
        weight = np.hstack([layer.weight.detach().numpy().astype(np.float64),
                            layer.bias.detach().numpy().astype(np.float64)[:, None]])
        relu = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
        if linear_before:  # y = W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)
            previous, _ = layers.pop()
            w2, b2 = weight[:, :-1], weight[:, -1:]
            weight = np.hstack([w2 @ previous[:, :-1], w2 @ previous[:, -1:] + b2])
        layers.append((weight, relu))
        linear_before = not relu
    return layers


def _with_one(width_with_bias: int) -> np.ndarray:
    buffer = np.zeros(width_with_bias, dtype=np.float32)
    buffer[-1] = 1.0
    return buffer
