"""A second signal beside reconstruction error: how isolated an event's code is among normal codes.

A network that has seen a fault pattern a few times reconstructs it well, so reconstruction
error alone comes to learn a fault that recurs as normal (and one that lies on the normal
manifold, at a rare operating point, it may reconstruct well from the start). Where the event
falls in the bottleneck says what the error does not: a recurring fault still lands where few
normal events do.

The reference is the remembered events (the rehearsal memory: events the network learned, which
flagged events are not), encoded by the current network, so that codes and reference move
together as it learns. The signal is a local outlier ratio (after LOF, Breunig et al. 2000): the
mean distance from the event's code to its ``k`` nearest reference codes, over those neighbours'
own mean distance to their ``k`` nearest. A raw distance is large for every event in the thin
tails of normal noise, which made pure noise flag ten times as often; the ratio stays about 1
there, and only an event far from where normal events lie, for the local spacing there, scores
high. Distances below ``FLOOR`` (code units) count as ``FLOOR``: the codes of a constant stream
differ by rounding alone. :class:`~ae_core.scoring.ResidualScorer` turns the ratio into a score
column beside the residual channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FLOOR = 1e-3


@dataclass(frozen=True)
class Reference:
    """Normal codes, with each one's mean distance to its ``k`` nearest other codes."""

    codes: torch.Tensor
    spacing: torch.Tensor
    k: int

    @staticmethod
    def of(codes: np.ndarray, k: int) -> Reference:
        ref = torch.from_numpy(np.asarray(codes, dtype=np.float32))
        k = max(1, min(k, len(ref) - 1))
        if len(ref) < 2:
            return Reference(ref, torch.full((len(ref),), FLOOR), k)
        pairwise = _distances(ref, ref)
        pairwise.fill_diagonal_(float("inf"))
        spacing = pairwise.topk(k, dim=1, largest=False).values.mean(dim=1).clamp_min(FLOOR)
        return Reference(ref, spacing, k)

    def outlier_ratio(self, codes: np.ndarray) -> np.ndarray:
        """Each code's mean distance to its nearest reference codes, over their own spacing;
        ones (neutral) while the reference is empty."""
        if len(self.codes) == 0 or len(codes) == 0:
            return np.zeros(len(codes))
        pairwise = _distances(torch.from_numpy(np.asarray(codes, dtype=np.float32)), self.codes)
        nearest = pairwise.topk(min(self.k, len(self.codes)), dim=1, largest=False)
        distance = nearest.values.mean(dim=1).clamp_min(FLOOR)
        return np.log((distance / self.spacing[nearest.indices].mean(dim=1)).numpy().astype(np.float64))


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances. (The matrix-product shortcut rounds a row's distances differently with
    the number of rows: callers pass a fixed number, so results do not depend on the stream's cuts.)"""
    return torch.cdist(a, b)


def cross_outlier_ratio(codes: np.ndarray, k: int) -> np.ndarray:
    """:meth:`Reference.outlier_ratio` of each half of ``codes`` (time order) against the other
    half: an event measured against a reference it is part of would look more typical than it is."""
    half = len(codes) // 2
    return np.concatenate([Reference.of(codes[half:], k).outlier_ratio(codes[:half]),
                           Reference.of(codes[:half], k).outlier_ratio(codes[half:])])
