"""A realistic multivariate sensor recording with labelled injected anomalies."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson

CHANNELS = ("pump_pressure", "flow_rate", "motor_current", "motor_temp",
            "vibration_x", "vibration_y", "valve_position", "supply_voltage")
KINDS = ("spike", "level_shift", "drift", "stuck", "broken_correlation")
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Injected:
    kind: str
    start: int
    stop: int
    channel: str


def channel_names(k: int) -> tuple[str, ...]:
    return tuple(CHANNELS[i] if i < len(CHANNELS) else f"sensor_{i}" for i in range(k))


def simulate(events: int, features: int, seed: int, anomaly_every: int = 700,
             period: int = 720) -> tuple[np.ndarray, np.ndarray, list[Injected]]:
    """Readings ``(events, features)``, 0/1 labels, and the injected anomalies.

    Three latent drivers (a daily cycle of ``period`` events, a slow mean-reverting load, a fast
    disturbance) mix into correlated channels with their own offsets, units and noise. From the
    first 25% on, an anomaly of each kind in turn starts about every ``anomaly_every`` events.
    """
    rng = np.random.default_rng(seed)
    drivers = _drivers(rng, events, period)
    mixing, offsets = rng.normal(0.0, 1.0, size=(3, features)), rng.uniform(1.0, 100.0, size=features)
    X = _readings(rng, drivers, mixing, offsets)
    std = X[: events // 4].std(axis=0) + 1e-9
    labels = np.zeros(events)
    injected = []
    position, n = events // 4, 0
    while position < events - 50:
        kind = KINDS[n % len(KINDS)]
        channel = int(rng.integers(features))
        length = {"spike": int(rng.integers(1, 4)), "level_shift": int(rng.integers(40, 120)),
                  "drift": int(rng.integers(120, 300)), "stuck": int(rng.integers(60, 150)),
                  "broken_correlation": int(rng.integers(60, 150))}[kind]
        stop = min(events, position + length)
        seg = slice(position, stop)
        sign = rng.choice([-1.0, 1.0])
        if kind == "spike":
            X[seg, channel] += sign * rng.uniform(6.0, 10.0) * std[channel]
        elif kind == "level_shift":
            X[seg, channel] += sign * rng.uniform(3.0, 5.0) * std[channel]
        elif kind == "drift":
            X[seg, channel] += sign * np.linspace(0.5, 5.0, stop - position) * std[channel]
        elif kind == "stuck":
            X[seg, channel] = X[position, channel]
        else:
            base = offsets[channel]
            X[seg, channel] = base - (X[seg, channel] - base)
        labels[seg] = 1.0
        injected.append(Injected(kind, position, stop, channel_names(features)[channel]))
        position = stop + int(rng.integers(anomaly_every // 2, anomaly_every * 3 // 2))
        n += 1
    return X, labels, injected


def recurring(events: int, features: int, seed: int, patterns: int = 3, share: float = 0.07,
              period: int = 720) -> tuple[np.ndarray, np.ndarray, list[Injected]]:
    """Normal operation (as :func:`simulate`) among which a few fault patterns come back again and
    again: ``patterns`` operating points the plant rarely visits, each holding the daily cycle and
    the load at values 1.5-3.5 times their usual spread for 15-45 events, in turn, on about
    ``share`` of the rows. The readings stay consistent with each other (the same mixing of the
    same drivers), so a network that has seen a pattern reconstructs it: a fault reconstruction
    error alone learns as normal, and the case for a density signal. Labels mark every occurrence."""
    rng = np.random.default_rng(seed)
    drivers = _drivers(rng, events, period)
    spread = drivers[:, :2].std(axis=0)
    points = [rng.choice([-1.0, 1.0], size=2) * rng.uniform(1.5, 3.5, size=2) * spread for _ in range(patterns)]
    labels = np.zeros(events)
    injected = []
    gap = int(30 / share)
    position, n = events // 8, 0
    while position < events - 50:
        stop = min(events, position + int(rng.integers(15, 46)))
        drivers[position:stop, :2] = points[n % patterns]
        labels[position:stop] = 1.0
        injected.append(Injected(f"pattern_{n % patterns + 1}", position, stop, "all"))
        position = stop + int(rng.integers(gap // 2, gap * 3 // 2))
        n += 1
    mixing, offsets = rng.normal(0.0, 1.0, size=(3, features)), rng.uniform(1.0, 100.0, size=features)
    return _readings(rng, drivers, mixing, offsets), labels, injected


def _drivers(rng: np.random.Generator, events: int, period: int) -> np.ndarray:
    """Three latent drivers: a daily cycle, a slow mean-reverting load, a fast disturbance."""
    cycle = np.sin(2 * np.pi * np.arange(events) / period)
    return np.column_stack([cycle, _ar1(rng, events, 0.995, 0.1), _ar1(rng, events, 0.7, 0.5)])


def _readings(rng: np.random.Generator, drivers: np.ndarray, mixing: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Channels mixing the drivers, each with its own offset, unit and noise."""
    scales = rng.uniform(0.05, 5.0, size=mixing.shape[1])
    return offsets + scales * (drivers @ mixing + rng.normal(0.0, 0.15, size=(len(drivers), mixing.shape[1])))


STRESS = ("flat", "noise", "spike", "step", "step-return")


def stress(kind: str, events: int = 6000, features: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stream that tests a decision mechanism rather than detection: ``flat`` (exactly constant,
    as a stuck sensor or a CSV of one value is) and ``noise`` (independent Gaussian noise) hold no anomaly; ``spike``
    has one valid but extreme reading (1e15) at the middle; ``step`` shifts every channel by 8
    standard deviations at the middle for good; ``step-return`` shifts them for 100 events and
    comes back. Labels mark the spike and the shifted events."""
    if kind not in STRESS:
        raise ValueError(f"unknown stress stream {kind!r}; one of {', '.join(STRESS)}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(events)
    middle = events // 2
    if kind == "flat":
        return np.full((events, features), 40.0), labels
    X = rng.normal(0.0, 1.0, size=(events, features)) + np.arange(1, features + 1) * 10.0
    if kind == "spike":
        X[middle, 0] = 1e15
        labels[middle] = 1.0
    elif kind == "step":
        X[middle:] += 8.0
        labels[middle:] = 1.0
    elif kind == "step-return":
        X[middle:middle + 100] += 8.0
        labels[middle:middle + 100] = 1.0
    return X, labels


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    out = np.empty(n)
    noise = rng.normal(0.0, sigma, size=n)
    value = 0.0
    for i in range(n):
        value = phi * value + noise[i]
        out[i] = value
    return out


def write_recording(path: str | Path, X: np.ndarray, labels: np.ndarray, every_seconds: float = 60.0) -> None:
    """CSV (``timestamp``, channels, ``anomaly``) or JSON lines when the name ends in .jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = channel_names(X.shape[1])
    stamps = [(START + timedelta(seconds=i * every_seconds)).isoformat() for i in range(len(X))]
    rounded = np.round(X, 5).tolist()
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open("wb") as fh:
            for stamp, row, label in zip(stamps, rounded, labels.tolist()):
                fh.write(orjson.dumps({"timestamp": stamp, **dict(zip(names, row)), "anomaly": int(label)}) + b"\n")
        return
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", *names, "anomaly"])
        for stamp, row, label in zip(stamps, rounded, labels.tolist()):
            writer.writerow([stamp, *row, int(label)])
