"""The online statistics: scaler, threshold and sliding window."""

from __future__ import annotations

import json

import numpy as np
import pytest
from river import stats
from scipy import stats as scipy_stats

from ae_core.scaling import OnlineScaler
from ae_core.threshold import AdaptiveThreshold
from ae_core.windowing import SlidingWindow


def test_standard_scaler_matches_river_var_per_feature() -> None:
    rng = np.random.default_rng(0)
    scaler = OnlineScaler(3, "standard")
    reference = [stats.Var() for _ in range(3)]
    for size in (1, 7, 50, 3):
        X = rng.normal(5.0, 2.0, size=(size, 3))
        scaler.learn_many(X)
        for j, var in enumerate(reference):
            var.update_many(X[:, j])
    for j, var in enumerate(reference):
        assert scaler.mean[j] == pytest.approx(var.mean.get())
        assert scaler.std[j] == pytest.approx(var.get() ** 0.5)


@pytest.mark.parametrize("offset", [1e6, 1e9])
def test_standard_scaler_keeps_the_spread_of_a_channel_far_from_zero(offset: float) -> None:
    """Readings of 1e6 varying by 1e-3 (a meter's running total, a pressure in pascals): the
    one-pass update river's Var uses cancels on the first batch (at 1e6 no spread was left, and a
    constant's spread of 1 was used; at 1e9 a spread of 5)."""
    X = np.random.default_rng(0).normal(offset, 1e-3, size=(2000, 2))
    scaler = OnlineScaler(2, "standard", clip=20.0, horizon=10_000)
    for start in range(0, len(X), 256):
        scaler.learn_many(X[start:start + 256])
    assert scaler.std == pytest.approx(X.std(axis=0, ddof=1), rel=1e-4)
    assert scaler.mean == pytest.approx(X.mean(axis=0), rel=1e-12)


def test_constant_features_and_unseen_values_stay_finite() -> None:
    for kind in ("standard", "minmax"):
        scaler = OnlineScaler(2, kind)
        assert np.isfinite(scaler.transform(np.array([[1e6, -3.0]]))).all()  # before any data
        scaler.learn_many(np.array([[4.0, 1.0], [4.0, 2.0], [4.0, 3.0]]))
        out = scaler.transform(np.array([[4.0, 2.0], [1e9, -1e9]]))
        assert np.isfinite(out).all()


def test_minmax_clips_to_unit_interval() -> None:
    scaler = OnlineScaler(1, "minmax")
    scaler.learn_many(np.array([[0.0], [10.0]]))
    assert scaler.transform(np.array([[5.0], [20.0], [-5.0]])).ravel().tolist() == [0.5, 1.0, 0.0]


def test_threshold_is_none_before_data_then_follows_the_formula() -> None:
    th = AdaptiveThreshold(k=3.0, window_batches=10)
    assert th.get() is None
    th.update_many(np.array([8.0]))
    assert th.get() is None
    scores = np.array([1.0, 8.0, 27.0, 64.0])
    th = AdaptiveThreshold(k=3.0, window_batches=10)
    th.update_many(scores[:2])
    th.update_many(scores[2:])
    roots = np.cbrt(scores)
    assert th.get() == pytest.approx((roots.mean() + 3.0 * roots.std(ddof=1)) ** 3)


def test_threshold_forgets_batches_older_than_its_window() -> None:
    th = AdaptiveThreshold(k=2.0, window_batches=2)
    th.update_many(np.full(10, 1000.0))
    th.update_many(np.array([1.0, 8.0]))
    th.update_many(np.array([1.0, 8.0]))
    roots = np.cbrt([1.0, 8.0, 1.0, 8.0])
    assert th.get() == pytest.approx((roots.mean() + 2.0 * roots.std(ddof=1)) ** 3)
    restored = AdaptiveThreshold(k=2.0, window_batches=2)
    restored.load_state(th.state())
    assert restored.get() == pytest.approx(th.get())


def test_sliding_window_per_key_with_first_reading_padding() -> None:
    win = SlidingWindow(width=3, n_channels=1)
    X = np.array([[1.0], [10.0], [2.0], [20.0], [3.0]])
    keys = np.array(["a", "b", "a", "b", "a"])
    out = win.transform(X, keys)
    assert out.tolist() == [[1, 1, 1], [10, 10, 10], [1, 1, 2], [10, 10, 20], [1, 2, 3]]
    assert win.transform(np.array([[4.0]]), np.array(["a"])).tolist() == [[2, 3, 4]]
    assert all(len(h) == 2 for h in win.history.values())


def test_sliding_window_is_the_same_however_the_rows_are_split() -> None:
    X = np.arange(20, dtype=float).reshape(10, 2)
    whole = SlidingWindow(4, 2).transform(X, None)
    split = SlidingWindow(4, 2)
    parts = np.concatenate([split.transform(X[:3], None), split.transform(X[3:4], None), split.transform(X[4:], None)])
    np.testing.assert_array_equal(whole, parts)
    assert whole[-1].tolist() == X[6:10].ravel().tolist()


def test_quantile_threshold_is_margin_times_rolling_quantile() -> None:
    from ae_core.threshold import QuantileThreshold

    th = QuantileThreshold(q=0.5, margin=2.0, window=4, batch_size=2)
    assert th.get() is None
    th.update_many(np.array([100.0, 100.0]))
    th.update_many(np.array([1.0, 2.0, 3.0, 4.0]))  # the window keeps the last four
    assert th.get() == pytest.approx(2.0 * np.quantile([1.0, 2.0, 3.0, 4.0], 0.5), rel=0.3)
    assert th.get() < 100.0
    restored = QuantileThreshold(q=0.5, margin=2.0, window=4, batch_size=2)
    restored.load_state(th.state())
    assert restored.get() == th.get()


def test_winsorised_learning_keeps_one_extreme_reading_from_owning_the_statistics() -> None:
    rng = np.random.default_rng(3)
    robust, plain = OnlineScaler(1, "standard", clip=5.0), OnlineScaler(1, "standard")
    for scaler in (robust, plain):
        scaler.learn_many(rng.normal(size=(1000, 1)))
        scaler.learn_many(np.array([[1e15]]))
    assert abs(robust.mean[0]) < 0.1 and robust.std[0] < 1.2
    assert plain.std[0] > 1e12
    assert robust.transform(np.array([[1e15]]))[0, 0] == 5.0  # clipped at clip standard deviations


def test_horizon_lets_the_centre_follow_a_new_normal() -> None:
    rng = np.random.default_rng(4)
    forgetting, keeping = OnlineScaler(1, "standard", horizon=1000), OnlineScaler(1, "standard")
    for scaler in (forgetting, keeping):
        for level in (0.0, 10.0):
            for _ in range(20):
                scaler.learn_many(rng.normal(level, 1.0, size=(250, 1)))
    assert forgetting.mean[0] > 9.5 and forgetting.std[0] < 1.5
    assert 4.0 < keeping.mean[0] < 6.0


@pytest.mark.parametrize(("name", "dist"), [("exponential", scipy_stats.expon()),
                                             ("chi-square", scipy_stats.chi2(8, scale=1 / 8)),
                                             ("log-normal", scipy_stats.lognorm(0.8))])
def test_spot_extrapolates_a_tail_beyond_the_scores_seen(name: str, dist: scipy_stats.rv_continuous) -> None:
    # 4,096 scores hold about 4 above the 1e-3 quantile and none above the 1e-4 one: the fitted
    # tail, not the empirical quantile, must put the level there. Median of 40 seeded samples.
    from ae_core.threshold import spot_level

    rng = np.random.default_rng(5)
    for risk, tolerance in ((1e-2, 0.02), (1e-3, 0.06), (1e-4, 0.10)):
        levels = [spot_level(dist.rvs(4096, random_state=rng), risk) for _ in range(40)]
        assert np.median(levels) == pytest.approx(dist.isf(risk), rel=tolerance), (name, risk)


def test_spot_fits_generalised_pareto_samples() -> None:
    from ae_core.threshold import gpd_pwm

    rng = np.random.default_rng(6)
    for shape in (-0.2, 0.0, 0.2):
        fitted_shape, scale = gpd_pwm(scipy_stats.genpareto.rvs(shape, scale=2.0, size=20_000, random_state=rng))
        assert fitted_shape == pytest.approx(shape, abs=0.03) and scale == pytest.approx(2.0, rel=0.05)


def test_spot_uses_the_sigma_rule_until_it_has_enough_scores_and_restores_exactly() -> None:
    from ae_core.threshold import MIN_SCORES, AdaptiveThreshold, SpotThreshold

    def spot() -> SpotThreshold:
        return SpotThreshold(risk=1e-3, window=1000, fallback=AdaptiveThreshold(k=4.0, window_batches=4))

    th, sigma = spot(), AdaptiveThreshold(k=4.0, window_batches=4)
    scores = np.random.default_rng(7).exponential(size=1200)
    th.update_many(scores[:MIN_SCORES - 1])
    sigma.update_many(scores[:MIN_SCORES - 1])
    assert th.get() == sigma.get()  # too few normal scores for a tail: the sigma rule decides
    for start in range(MIN_SCORES - 1, len(scores), 250):
        th.update_many(scores[start:start + 250])
    level = th.get()
    assert level is not None and level != th.fallback.get()
    assert level == pytest.approx(np.log(1000), rel=0.2)  # exponential: P(score > ln 1000) = 1e-3
    restored = spot()
    restored.load_state(json.loads(json.dumps(th.state())))  # as a checkpoint holds it
    assert restored.get() == level and restored.n == 1000  # the window keeps the last 1,000
    th.reset()
    assert th.get() is None


def test_the_extremal_index_counts_the_exceedances_that_begin_a_cluster() -> None:
    from ae_core.threshold import extremal_index

    scores = np.zeros(40)
    scores[[3, 4, 5, 6, 20, 21, 22, 23]] = 5.0  # two clusters of four
    assert extremal_index(scores, 1.0, run=1) == 0.25
    scores[[30, 34]] = 5.0  # four apart: one cluster with run 4, two with run 3
    assert extremal_index(scores, 1.0, run=4) == 3 / 10 and extremal_index(scores, 1.0, run=3) == 4 / 10
    assert extremal_index(np.arange(5.0), 10.0, run=1) == 1.0  # no exceedance


def test_an_alert_budget_counts_clusters_of_exceedances_not_events() -> None:
    """Scores that come five equal ones in a row (a smoothed score lingers above a level): an alert
    budget of 1e-3 per event must put the level where clusters, not events, come at that rate; a
    risk of 1e-3 alone would allow one cluster per 5,000 events, a fifth of the budget."""
    from ae_core.threshold import AdaptiveThreshold, SpotThreshold

    rng = np.random.default_rng(8)

    def lingering(n: int) -> np.ndarray:
        return np.repeat(rng.exponential(size=n // 5), 5)

    def clusters(scores: np.ndarray, level: float) -> int:
        above = scores > level
        return int((above[1:] & ~above[:-1]).sum() + above[0])

    def level(budget: float | None) -> float:
        th = SpotThreshold(risk=1e-3, window=20_000, fallback=AdaptiveThreshold(k=4.0, window_batches=4),
                           alert_budget=budget, run=1)
        th.update_many(lingering(20_000))
        return th.get()  # type: ignore[return-value]

    fresh = lingering(1_000_000)
    by_budget, by_risk = clusters(fresh, level(1e-3)), clusters(fresh, level(None))
    assert 1000 / 2 <= by_budget <= 1000 * 2, by_budget  # 1e-3 of a million events, within a factor 2
    assert by_risk < 1000 / 2.5, by_risk
