"""The autoencoder architecture, and nothing else: no training, no scoring."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def activate(logits: torch.Tensor, output: str) -> torch.Tensor:
    """The output activation applied to decoder logits: sigmoid, or identity."""
    return torch.sigmoid(logits) if output == "sigmoid" else logits


class Autoencoder(nn.Module):
    """Symmetric feed-forward autoencoder ``n -> hidden... -> q -> ...hidden -> n``.

    Hidden layers use ReLU; the bottleneck is linear. The decoder ends in raw logits when
    ``output='sigmoid'`` (the loss applies the sigmoid stably) and :meth:`reconstruct` maps them
    to [0, 1]; with ``output='identity'`` the last layer is linear. No BatchNorm, so a batch may
    hold a single event; no layer acts differently when training (no dropout either), so the
    detector never switches the module's mode (``Module.train()`` walks every layer: 5% of the
    detector's time when it switched twice per mini-batch).
    """

    def __init__(self, n_features: int, hidden: tuple[int, ...], bottleneck: int, output: str) -> None:
        super().__init__()
        self.output = output
        widths = [n_features, *hidden, bottleneck]
        self.encoder = _stack(widths, last_activation=False)
        self.decoder = _stack(widths[::-1], last_activation=False)
        self._index_layers()

    def _index_layers(self) -> None:
        # every linear layer in order, and whether a ReLU follows it; the first `depth` encode
        chain = [*self.encoder, *self.decoder]
        self.linears = [(layer, isinstance(after, nn.ReLU)) for layer, after in zip(chain, [*chain[1:], None])
                        if isinstance(layer, nn.Linear)]
        self.depth = sum(isinstance(layer, nn.Linear) for layer in self.encoder)

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        if "linears" not in self.__dict__:  # pickled before the layers were indexed
            self._index_layers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output before the output activation."""
        return self.decode(self.encode(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.forward(x), self.output)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.linears[:self.depth], x)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decoder logits of bottleneck codes."""
        return run_layers(self.linears[self.depth:], codes)


def run_layers(layers: list[tuple[nn.Linear, bool]], x: torch.Tensor,
               inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The layers' own arithmetic (``F.linear``, ReLU) without ``nn.Module``'s call machinery
    around each; with ``inputs``, each layer's input is appended to it (for the backward pass)."""
    for layer, relu in layers:
        if inputs is not None:
            inputs.append(x)
        x = F.linear(x, layer.weight, layer.bias)
        if relu:
            x = torch.relu(x)
    return x


def _stack(widths: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
