"""The Kafka-free loop: recording -> batches -> detector -> sinks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ae_core import AutoencoderDetector
from worker.errors import InputFormatError
from worker.replay.sinks import JsonLinesSink
from worker.replay.sources import Recording, RowBatch
from worker.results import RunSummary, result_lines
from worker.settings import DetectorSettings

logger = logging.getLogger(__name__)


@dataclass
class Trace:
    """Per-row arrays kept for evaluation and plots (grows with the recording)."""

    index: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    threshold: list[np.ndarray] = field(default_factory=list)
    flags: list[np.ndarray] = field(default_factory=list)
    alerts: list[np.ndarray] = field(default_factory=list)
    regime_change: list[np.ndarray] = field(default_factory=list)
    episode: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)  # the time column's text, when there is one

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) if parts else np.empty(0) for name, parts in vars(self).items()}


class Replay:
    """Replays a recording through a fresh detector, writing one record per input row in order."""

    def __init__(self, detector: DetectorSettings, sink: JsonLinesSink, errors: JsonLinesSink,
                 emit_latent: bool = False, progress: bool = False, trace: Trace | None = None,
                 initial: AutoencoderDetector | None = None) -> None:
        self.detector_settings = detector
        self.sink = sink
        self.errors = errors
        self.emit_latent = emit_latent
        self.progress = progress
        self.trace = trace
        self.detector = initial

    def run(self, recording: Recording) -> RunSummary:
        channels = recording.channels
        if self.detector is None:
            self.detector = AutoencoderDetector(self.detector_settings.to_config(len(channels), channels))
        elif self.detector.config.names != channels:
            raise InputFormatError(f"{recording.path}: channels {', '.join(channels)} differ from the "
                                   f"checkpoint's {', '.join(self.detector.config.names)}")
        summary = RunSummary(output=self.sink.name, errors_output=self.errors.name)
        started = time.perf_counter()
        bar = _progress_bar(self.progress)
        with self.sink, self.errors:
            for batch in recording.batches():
                self._process(batch, channels, summary)
                if bar is not None:
                    bar.update(len(batch.index) + len(batch.bad))
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - started
        return summary

    def _process(self, batch: RowBatch, channels: tuple[str, ...], summary: RunSummary) -> None:
        assert self.detector is not None
        res = self.detector.process_many(batch.values, batch.keys, latent=self.emit_latent)
        leading: dict[str, list[Any]] = {"index": batch.index.tolist()}
        if batch.times is not None:
            leading["time"] = batch.times
        if batch.keys is not None:
            leading["key"] = batch.keys
        if batch.labels is not None:
            leading["label"] = batch.labels.tolist()
        invalid = [{"index": index, "invalid": reason, "raw": raw} for index, reason, raw in batch.bad]
        for item in invalid:
            summary.add_invalid(item["invalid"])
        self.errors.write_many(invalid)
        if self.sink.writes:
            lines = result_lines(res, channels, leading=leading)
            if invalid:  # in the recording's order, each invalid row where it stood
                marks = [orjson.dumps({"index": r["index"], "invalid": r["invalid"]}) for r in invalid]
                lines = [line for _, line in sorted([*zip(leading["index"], lines),
                                                     *zip((r["index"] for r in invalid), marks)],
                                                    key=lambda pair: pair[0])]
            self.sink.write_lines(lines)
        summary.rows += len(res) + len(invalid)
        summary.add(batch.index, res, channels, batch.labels)
        if self.trace is not None:
            self.trace.index.append(batch.index)
            self.trace.score.append(res.score)
            self.trace.threshold.append(res.threshold)
            self.trace.flags.append(res.is_anomaly)
            self.trace.alerts.append(res.alert)
            self.trace.regime_change.append(res.regime_change)
            self.trace.episode.append(res.episode)
            if batch.labels is not None:
                self.trace.labels.append(batch.labels)
            if batch.times is not None:
                self.trace.times.append(np.asarray(batch.times, dtype=object))


def _progress_bar(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" rows", unit_scale=True, leave=False)
