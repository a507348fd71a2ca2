"""Turning a detector's batch result into output records, and summarising a run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ae_core import BatchResult
from ae_core.episodes import ClosedEpisode


def result_records(res: BatchResult, channels: tuple[str, ...], rows: np.ndarray | None = None,
                   leading: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """One dict per event (or per event in ``rows``): the ``leading`` columns first, then score
    and threshold (None in warm-up), reconstruction error, is_anomaly, alert, episode (None
    outside one) and contributions. The event that closes an episode also gets
    ``episode_closed`` (what the episode was); the event at which a new normal is accepted gets
    ``regime_change: true``."""
    pick = np.arange(len(res)) if rows is None else np.asarray(rows)
    names = np.asarray(channels, dtype=object)
    k = res.top_channels.shape[1]
    # every event's dicts in one pass, then cut a list per event (half the cost of a pass per event)
    flat = [{"channel": n, "share": s} for n, s in zip(names[res.top_channels[pick]].ravel().tolist(),
                                                          np.round(res.top_shares[pick], 4).ravel().tolist())]
    columns = _columns(res, pick, leading)
    columns["contributions"] = [flat[i:i + k] for i in range(0, len(flat), k)]
    if res.latent is not None:
        columns["latent"] = res.latent[pick].tolist()
    keys = list(columns)
    records = [dict(zip(keys, values)) for values in zip(*columns.values())]
    marked = np.flatnonzero(np.isin(pick, _marked_rows(res)))
    for at, row in zip(marked.tolist(), pick[marked].tolist()):
        closed = res.closed.get(row)
        if closed is not None:
            records[at]["episode_closed"] = episode_summary(closed)
        if res.regime_change[row]:
            records[at]["regime_change"] = True
    return records


def result_lines(res: BatchResult, channels: tuple[str, ...], leading: dict[str, list[Any]] | None = None
                 ) -> list[bytes]:
    """Every event's record of :func:`result_records` as one line of JSON, the same bytes as
    ``orjson.dumps`` of that record, at about a third of the cost (replay writes one per event):
    each column is serialised in one orjson call and cut into its values, and the lines are
    filled into one template. The few events that close an episode or accept a new normal
    carry more keys and go through :func:`result_records`."""
    k = res.top_channels.shape[1]
    opening = [b'{"channel":' + orjson.dumps(name) + b',"share":' for name in channels]
    shares = _encoded(np.round(res.top_shares, 4).ravel().tolist())
    items = [opening[c] + share + b"}" for c, share in zip(res.top_channels.ravel().tolist(), shares)]
    columns = {name: _encoded(values) for name, values in _columns(res, slice(None), leading).items()}
    columns["contributions"] = [b"[" + b",".join(items[i:i + k]) + b"]" for i in range(0, len(items), k)]
    if res.latent is not None:
        columns["latent"] = _encoded(res.latent.tolist())
    template = b"{" + b",".join(orjson.dumps(name) + b":%b" for name in columns) + b"}"
    lines = list(map(template.__mod__, zip(*columns.values())))
    marked = _marked_rows(res)
    if marked:
        picked = {name: [values[i] for i in marked] for name, values in (leading or {}).items()}
        for i, record in zip(marked, result_records(res, channels, np.asarray(marked), leading=picked)):
            lines[i] = orjson.dumps(record)
    return lines


def _columns(res: BatchResult, pick: np.ndarray | slice, leading: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
    """A record's fields up to its contributions, in their order: one list per field, a value
    per picked event."""
    return {
        **(leading or {}),
        "score": _nan_to_none(res.score[pick].tolist()),
        "reconstruction_error": res.error[pick].tolist(),
        "threshold": _nan_to_none(res.threshold[pick].tolist()),
        "is_anomaly": res.is_anomaly[pick].tolist(),
        "alert": res.alert[pick].tolist(),
        "episode": [None if e < 0 else e for e in res.episode[pick].tolist()],
    }


def _marked_rows(res: BatchResult) -> list[int]:
    """The rows whose record has more fields: those that close an episode or accept a new normal."""
    return sorted({*res.closed, *np.flatnonzero(res.regime_change).tolist()})


def _encoded(values: list[Any]) -> list[bytes]:
    """Each value as JSON: one orjson call for the list, cut at its commas when no value holds
    one (then there are exactly one fewer commas than values); else a call per value."""
    if not values:
        return []
    parts = orjson.dumps(values)[1:-1].split(b",")
    return parts if len(parts) == len(values) else [orjson.dumps(value) for value in values]


def episode_summary(closed: ClosedEpisode) -> dict[str, Any]:
    return {"episode": closed.episode, "events": closed.events, "flagged": closed.flagged,
            "peak_score": closed.peak_score, "accepted_as_normal": closed.accepted}


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if v != v else v for v in values]


@dataclass
class RunSummary:
    """Counts of a run, and where the flagged events lie."""

    rows: int = 0
    scored: int = 0
    invalid: int = 0
    live: int = 0
    anomalies: int = 0
    episodes: int = 0
    regime_changes: int = 0
    segments: list[tuple[int, int]] = field(default_factory=list)
    top_channels: Counter[str] = field(default_factory=Counter)
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    invalid_examples: dict[str, str] = field(default_factory=dict)  # the first whole reason of each kind
    labelled: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    output: str = ""
    errors_output: str = ""

    def add(self, index: np.ndarray, res: BatchResult, channels: tuple[str, ...],
            labels: np.ndarray | None = None) -> None:
        self.scored += len(res)
        live = ~np.isnan(res.threshold)
        self.live += int(live.sum())
        if labels is not None:
            truth, flags = labels[live] > 0.5, res.is_anomaly[live]
            self.labelled.update(tp=int((truth & flags).sum()), fp=int((~truth & flags).sum()),
                                 fn=int((truth & ~flags).sum()), tn=int((~truth & ~flags).sum()))
        flagged = index[res.is_anomaly]
        self.anomalies += len(flagged)
        self.episodes += int(res.alert.sum())
        self.regime_changes += int(res.regime_change.sum())
        for channel in res.top_channels[res.is_anomaly, 0].tolist():
            self.top_channels[channels[channel]] += 1
        for i in flagged.tolist():
            if self.segments and self.segments[-1][1] == i - 1:
                self.segments[-1] = (self.segments[-1][0], i)
            else:
                self.segments.append((i, i))

    def add_invalid(self, reason: str) -> None:
        self.invalid += 1
        kind = reason.split(":")[0]
        self.invalid_reasons[kind] += 1
        self.invalid_examples.setdefault(kind, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "scored": self.scored, "invalid": self.invalid, "live": self.live,
            "anomalies": self.anomalies, "episodes": self.episodes, "regime_changes": self.regime_changes,
            "anomaly_rate": self.anomalies / self.live if self.live else 0.0,
            "segments": [list(s) for s in self.segments], "top_channels": dict(self.top_channels.most_common()),
            "invalid_reasons": dict(self.invalid_reasons), "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rows / self.seconds) if self.seconds > 0 else None,
            "output": self.output, "errors_output": self.errors_output,
        }

    def render(self) -> str:
        d = self.as_dict()
        lines = [
            f"rows: {self.rows}  scored: {self.scored}  invalid: {self.invalid}  "
            f"judged after warm-up: {self.live}",
            f"anomalies: {self.anomalies} ({100 * d['anomaly_rate']:.2f}% of judged events) "
            f"in {len(self.segments)} segment(s); alerts (pages: episodes opened or escalated): {self.episodes}"
            + (f"; new normal accepted: {self.regime_changes}" if self.regime_changes else ""),
        ]
        shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in self.segments[:12])
        if self.segments:
            more = f" (+{len(self.segments) - 12} more)" if len(self.segments) > 12 else ""
            lines.append(f"flagged rows: {shown}{more}")
        if self.labelled:
            m = self.labelled
            precision = m["tp"] / max(1, m["tp"] + m["fp"])
            recall = m["tp"] / max(1, m["tp"] + m["fn"])
            far = m["fp"] / max(1, m["fp"] + m["tn"])
            lines.append(f"against the label column (judged events): precision {precision:.3f}  "
                         f"recall {recall:.3f}  false-alarm rate {far:.4f}")
        if self.top_channels:
            lines.append("worst channel of flagged events: " + ", ".join(
                f"{name} ({count})" for name, count in self.top_channels.most_common(5)))
        if self.invalid_reasons:
            lines.append("invalid rows: " + ", ".join(f"{r} ({n})" for r, n in self.invalid_reasons.most_common(5)))
        lines.append(f"output: {self.output}" + (f"  invalid rows: {self.errors_output}" if self.invalid else ""))
        if d["events_per_second"]:
            lines.append(f"time: {self.seconds:.2f} s ({d['events_per_second']} rows/s)")
        return "\n".join(lines)
