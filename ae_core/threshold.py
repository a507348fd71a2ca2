"""Adaptive threshold on the anomaly-score stream, built on :class:`river.stats.Var`."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from river import stats


class AdaptiveThreshold:
    """Rolling ``(mean + k * std) ** 3`` of the cube roots of recent normal events' scores.

    The score is a mean of squared standardised residuals, shaped like a scaled chi-square. Its
    cube root is close to normal (Wilson-Hilferty), so ``mean + k * std`` on that scale behaves
    like a high quantile whose level ``k`` sets (k=3: about 99.9%), without the plain score's
    heavy right tail inflating the spread or a log's long left tail doing the same. The statistics
    are a :class:`river.stats.Var` per mini-batch, merged with river's ``+`` and ``-`` over the
    last ``window_batches`` mini-batches, so the threshold follows slow drift and forgets the
    untrained model's first scores. :meth:`get` returns ``None`` until two scores were seen.
    """

    censored = False  # learns normal events' scores only

    def __init__(self, k: float, window_batches: int) -> None:
        self.k = k
        self.window_batches = window_batches
        self._batches: deque[stats.Var] = deque()
        self._total = stats.Var()
        self._since_rebuild = 0

    def update_many(self, scores: np.ndarray) -> None:
        if len(scores) == 0:
            return
        batch = stats.Var()
        batch.update_many(np.cbrt(np.asarray(scores, dtype=np.float64)))
        self._batches.append(batch)
        self._total += batch
        if len(self._batches) > self.window_batches:
            self._total -= self._batches.popleft()
        self._since_rebuild += 1
        if self._since_rebuild >= self.window_batches:
            self._rebuild()

    def reset(self) -> None:
        self._batches.clear()
        self._rebuild()

    def _rebuild(self) -> None:
        # Merging then un-merging summaries leaks rounding error; start over once per window.
        total = stats.Var()
        for batch in self._batches:
            total += batch
        self._total = total
        self._since_rebuild = 0

    @property
    def n(self) -> float:
        return self._total.mean.n

    def get(self) -> float | None:
        if self.n < 2:
            return None
        root = self._total.mean.get() + self.k * math.sqrt(max(self._total.get(), 0.0))
        return max(root, 0.0) ** 3

    def state(self) -> dict[str, object]:
        """Every summary as river holds it (count, mean, sum of squared deviations) and the merge
        count since the last rebuild: a restored threshold equals the saved one to the bit,
        including the rounding its running merges had accumulated."""
        return {"batches": [_raw(b) for b in self._batches], "total": _raw(self._total),
                "since_rebuild": self._since_rebuild}

    def load_state(self, saved: dict[str, object] | list[list[float]]) -> None:
        if isinstance(saved, list):  # checkpoints before version 4: (n, mean, variance) per batch
            self._batches = deque(stats.Var._from_state(n, m, v) for n, m, v in saved)
            self._rebuild()
            return
        self._batches = deque(_var(*raw) for raw in saved["batches"])  # type: ignore[attr-defined]
        self._total = _var(*saved["total"])  # type: ignore[misc]
        self._since_rebuild = int(saved["since_rebuild"])  # type: ignore[call-overload]


def _raw(var: stats.Var) -> list[float]:
    return [float(var.mean.n), float(var.mean._mean), float(var._S)]


def _var(n: float, mean: float, squares: float) -> stats.Var:
    var = stats.Var()
    var.mean = stats.Mean._from_state(n, mean)
    var._S = squares
    return var


class QuantileThreshold:
    """``margin`` times a rolling quantile of recent normal events' scores
    (:class:`river.stats.RollingQuantile` over the last ``window`` scores).

    Makes no assumption on the score's distribution; ``q`` sets the expected false-alarm rate
    on a stationary stream (about ``1 - q``), ``margin`` above 1 trades recall for fewer alarms.
    """

    censored = False

    def __init__(self, q: float, margin: float, window: int, batch_size: int) -> None:
        self.q = q
        self.margin = margin
        self.window = window
        self.window_batches = max(1, window // batch_size)
        self._scores: deque[float] = deque(maxlen=window)
        self._quantile = stats.RollingQuantile(q, window_size=window)

    def update_many(self, scores: np.ndarray) -> None:
        for score in np.asarray(scores, dtype=np.float64).tolist():
            self._quantile.update(score)
            self._scores.append(score)

    @property
    def n(self) -> float:
        return float(len(self._scores))

    def get(self) -> float | None:
        value = self._quantile.get() if len(self._scores) >= 2 else None
        return None if value is None else self.margin * value

    def reset(self) -> None:
        self._scores.clear()
        self._quantile = stats.RollingQuantile(self.q, window_size=self.window)

    def state(self) -> list[float]:
        return list(self._scores)

    def load_state(self, scores: list[float]) -> None:
        self.reset()
        self.update_many(np.asarray(scores, dtype=np.float64))


# SPOT's initial level: the peaks are the normal scores above this share's quantile (Siffer et
# al., KDD 2017, use 98%), at least MIN_PEAKS of them; with fewer normal scores than
# MIN_PEAKS / TAIL_SHARE the tail is fitted on a larger share of them, and below MIN_SCORES
# normal scores there are too few to fit a tail at all: the sigma rule decides meanwhile.
TAIL_SHARE = 0.02
MIN_PEAKS = 20
MIN_SCORES = 200
# A generalised Pareto shape beyond these bounds is not estimated reliably from tens of peaks by
# probability-weighted moments (their variance is infinite for shape >= 1/2).
SHAPE_BOUNDS = (-0.5, 0.45)


# The alert budget's own account (see SpotThreshold): alerts and judged events, forgotten over
# about BUDGET_HORIZON events; it starts as if BUDGET_PRIOR of that horizon had paged at the budget,
# and it never takes the risk below BUDGET_FLOOR of the fitted one, so that an incident's pages
# tighten the threshold for a while, by a bounded amount, and never blind it.
BUDGET_HORIZON = 20_000
BUDGET_PRIOR = 0.05
BUDGET_FLOOR = 1 / 8


class SpotThreshold:
    """The score that normal events exceed with probability ``risk`` (streaming peaks over
    threshold, SPOT: Siffer et al., KDD 2017) over the last ``window`` normal scores.

    The scores above a high quantile ``t`` of recent normal scores (the peaks) follow, by the
    Pickands-Balkema-de Haan theorem, a generalised Pareto distribution whatever the scores'
    own distribution. Fitting it (probability-weighted moments: closed form, no iteration that
    can fail) extrapolates the tail beyond the scores seen, so the threshold sits where the
    configured share of normal events would cross it: ``risk`` is a false-alarm budget
    (``1e-3``: about ten flagged normal events per 10,000), not a number of standard deviations.
    The window forgets, so the tail follows drift (DSPOT's purpose). Until ``MIN_SCORES`` normal
    scores were seen the ``fallback`` rule (the sigma rule) decides.

    With ``alert_budget`` (false alerts per event) the budget is counted in alerts, what pages a
    person, not in flagged events: smoothed scores cross a level in clusters, and an alert is one
    cluster. The risk is the budget divided by the *extremal index* of the recent scores (the
    share of exceedances that begin a cluster, :func:`extremal_index`, with clusters apart by more
    than ``run`` events as episodes are), so that clusters x their rate is the budget. The fitted
    tail and the index only approximate what pages: the tail is fitted to censored scores, the
    level's exceedances come more often than its risk as the scores drift, and the index is taken
    below the threshold, where clusters are longer; on white noise they made 1.8-3.7 times the budget.
    So the threshold also keeps its own account (:meth:`record`): the alerts the detector raised and
    the events it judged, forgotten over ``BUDGET_HORIZON`` events, and the risk is scaled by the
    budget's share of the alerts (never above the fitted risk, never below ``BUDGET_FLOOR`` of it).

    It learns every judged score, a flagged one *censored* at the threshold that flagged it
    (``censored``): learning unflagged scores only would cut off the very tail being fitted, each
    threshold set too low would hide more of it, and on pure noise a 1e-2 budget flagged 9.6% of
    events (1e-3: 0.53%). Censored, the count of scores in the tail stays right (1.8% and 0.14%),
    while an anomaly's scores, however high, add no more than the threshold already there.
    """

    censored = True

    def __init__(self, risk: float, window: int, fallback: AdaptiveThreshold, alert_budget: float | None = None,
                 run: int = 1) -> None:
        self.risk = risk
        self.alert_budget = alert_budget
        self.run = run
        self.window = window
        self.fallback = fallback
        self._scores: deque[float] = deque(maxlen=window)
        self._value: float | None = None
        self._stale = True
        self.alerts = 0.0  # the budget's account: alerts and judged events, both forgotten alike
        self.events = 0.0

    def record(self, alerts: int, events: int) -> None:
        """Count a mini-batch's alerts and judged events into the budget's account."""
        if self.alert_budget is None or events == 0:
            return
        kept = math.exp(-events / BUDGET_HORIZON)
        # counted as if raised at the fitted risk: with the calibration in force while they came
        # (it changes only here), alerts / calibration. Raw counts would settle where the alerts
        # are sqrt(excess) times the budget (1.6 on white noise), not at it.
        self.alerts = self.alerts * kept + alerts / self.calibration()
        self.events = self.events * kept + events
        self._stale = True

    def calibration(self) -> float:
        """The budget's alerts over the alerts the fitted risk raises, with the prior's
        pseudo-events at the budget's rate on both sides, within ``[BUDGET_FLOOR, 1]``."""
        if self.alert_budget is None:
            return 1.0
        prior = BUDGET_PRIOR * BUDGET_HORIZON * self.alert_budget
        allowed = self.alert_budget * self.events + prior
        return min(1.0, max(BUDGET_FLOOR, allowed / (self.alerts + prior)))

    def update_many(self, scores: np.ndarray) -> None:
        if len(scores) == 0:
            return
        values = np.asarray(scores, dtype=np.float64)
        self._scores.extend(values.tolist())
        self.fallback.update_many(values)
        self._stale = True

    def reset(self) -> None:
        self._scores.clear()
        self.fallback.reset()
        self._stale = True

    @property
    def n(self) -> float:
        return float(len(self._scores))

    def get(self) -> float | None:
        if len(self._scores) < MIN_SCORES:
            return self.fallback.get()
        if self._stale:
            scores = np.fromiter(self._scores, dtype=np.float64, count=len(self._scores))
            risk = (self.risk if self.alert_budget is None
                    else budget_risk(scores, self.alert_budget, self.run) * self.calibration())
            self._value = spot_level(scores, risk)
            self._stale = False
        return self._value

    def state(self) -> dict[str, object]:
        return {"scores": list(self._scores), "fallback": self.fallback.state(), "alerts": self.alerts,
                "events": self.events}

    def load_state(self, saved: dict[str, object]) -> None:
        self._scores = deque(saved["scores"], maxlen=self.window)  # type: ignore[call-overload]
        self.fallback.load_state(saved["fallback"])  # type: ignore[arg-type]
        # (checkpoints before version 10 kept no account: it starts from the prior)
        self.alerts = float(saved.get("alerts", 0.0))  # type: ignore[arg-type]
        self.events = float(saved.get("events", 0.0))  # type: ignore[arg-type]
        self._stale = True


def extremal_index(scores: np.ndarray, level: float, run: int) -> float:
    """The share of the scores above ``level`` that begin a cluster of them (the runs estimator of
    the extremal index): exceedances more than ``run`` events apart are in different clusters.
    1 when every exceedance comes alone; 1/4 when they come four at a time; 1 without any."""
    at = np.flatnonzero(scores > level)
    if len(at) == 0:
        return 1.0
    return (1 + int((np.diff(at) > run).sum())) / len(at)


def budget_risk(scores: np.ndarray, alerts_per_event: float, run: int) -> float:
    """The per-event risk that makes ``alerts_per_event`` clusters of exceedances: the budget
    divided by the extremal index over the ``MIN_PEAKS`` highest scores (at most 1/2).

    Clusters thin out as the level rises (a smoothed score crosses a high level for fewer events
    in a row), so the index is taken as high as there are enough exceedances to count: on white
    noise, taken at the tail's initial level (the 98% quantile) it doubled the alerts."""
    cut = len(scores) - MIN_PEAKS - 1
    level = float(np.partition(scores, cut)[cut])
    return min(alerts_per_event / extremal_index(scores, level, run), 0.5)


def spot_level(scores: np.ndarray, risk: float) -> float:
    """The level that a score of the distribution behind ``scores`` exceeds with probability
    ``risk``: a generalised Pareto tail fitted to the peaks over a high quantile."""
    n = len(scores)
    peaks_wanted = max(MIN_PEAKS, int(math.ceil(TAIL_SHARE * n)))
    ordered = np.sort(scores)
    initial = float(ordered[n - peaks_wanted - 1])
    peaks = ordered[n - peaks_wanted:] - initial
    peaks = peaks[peaks > 0]
    if risk * n >= len(peaks) or len(peaks) < 2:
        # the level lies inside the scores seen (or they are all equal): no extrapolation needed
        return float(np.quantile(ordered, 1.0 - risk))
    shape, scale = gpd_pwm(peaks)
    ratio = risk * n / len(peaks)  # P(score > level) / P(score > initial)
    if abs(shape) < 1e-9:
        return initial - scale * math.log(ratio)
    return initial + scale / shape * (ratio ** -shape - 1.0)


def gpd_pwm(exceedances: np.ndarray) -> tuple[float, float]:
    """Shape and scale of a generalised Pareto distribution by probability-weighted moments
    (Hosking and Wallis, Technometrics 1987), the shape kept within ``SHAPE_BOUNDS``."""
    y = np.sort(exceedances)
    m = len(y)
    a0 = float(y.mean())
    a1 = float(np.dot((m - 1 - np.arange(m)) / (m - 1), y) / m)
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        return 0.0, max(a0, 1e-300)
    shape = min(max(2.0 - a0 / (a0 - 2 * a1), SHAPE_BOUNDS[0]), SHAPE_BOUNDS[1])
    # scale from the mean exceedance, a0 = scale / (1 - shape), consistent with the bounded shape
    return shape, a0 * (1.0 - shape)
