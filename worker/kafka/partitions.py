"""The partitions a worker owns: their detectors, channels, restoration and rebuilds.

A partition arrives (assigned, or rewound after a failed batch) paused; the loop restores it
(:meth:`Partitions.restore_arrived`): the latest snapshot from :class:`StateStore`, then a seek
back when the group's committed offset is ahead of it, so the events in between rebuild the
detector without publishing (:meth:`Partitions.live_from`). Without configured channels, a
partition's first events are held until they fix its channels by majority.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import TopicPartition

from ae_core import AutoencoderDetector
from worker.errors import SettingsError, WorkerError
from worker.kafka.events import EventParser, infer_channels
from worker.kafka.outputs import Outgoing
from worker.kafka.partition_state import LogBounds, PartitionState, Snapshot, StateStore
from worker.observability import Metrics
from worker.settings import Settings

logger = logging.getLogger(__name__)

# Without configured channels, a partition whose first events hold fewer valid ones than
# schema_sample is decided from what it has after this many times schema_sample events.
SCHEMA_PATIENCE = 8


class Partitions:
    """Per-partition state of one worker; the consumer is used for seeks, pauses and commits read."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = StateStore(settings, metrics)
        self.consumer: Any = None
        self.states: dict[TopicPartition, PartitionState] = {}
        self.parsers: dict[TopicPartition, EventParser] = {}
        self.assigned: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}  # next offset committed, per owned partition
        self.arrived: set[TopicPartition] = set()  # assigned (or rewound), paused until restored
        self.held: dict[TopicPartition, list[Any]] = {}  # events waiting for their channels
        # Partitions being rebuilt: events before this offset were published by an earlier owner;
        # they are processed again to rebuild the detector, and nothing is published for them.
        self.rebuild_until: dict[TopicPartition, int] = {}

    # -- ownership --------------------------------------------------------------------------------
    def take(self, tps: list[TopicPartition]) -> None:
        """Partitions assigned. kafka-python forbids blocking calls in its rebalance callbacks, so
        they are paused here and restored by the loop."""
        arrived = [tp for tp in tps if tp not in self.states]
        self.arrived |= set(arrived)
        if arrived:
            self.consumer.pause(*arrived)
        self.assigned |= set(tps)
        self.metrics.assigned.set(len(self.assigned))

    def release(self, tps: list[TopicPartition], save: bool) -> list[Outgoing]:
        """Partitions revoked: forget them. Returns their snapshots when ``save`` and at least once
        (exactly once, sends belong in a transaction: the next owner rebuilds from the last one)."""
        saved = []
        for tp in tps:
            if save and not self.settings.kafka.exactly_once:
                out = self.snapshot(tp, force=True)
                if out is not None:
                    saved.append(out)
            for table in (self.states, self.parsers, self.committed, self.rebuild_until, self.held):
                table.pop(tp, None)
            self.arrived.discard(tp)
        self.assigned -= set(tps)
        self.metrics.assigned.set(len(self.assigned))
        return saved

    def rewind(self, first: dict[TopicPartition, int]) -> None:
        """A batch failed: forget what it did to its partitions' detectors, fetch it again and
        restore those partitions as if just assigned (snapshot, then rebuild up to the commit)."""
        for tp, offset in first.items():
            self.states.pop(tp, None)
            self.held.pop(tp, None)
            self.rebuild_until.pop(tp, None)
            if tp in self.assigned:
                self.consumer.seek(tp, offset)
                self.consumer.pause(tp)
                self.arrived.add(tp)

    def first_offset(self, tp: TopicPartition, messages: list[Any]) -> int:
        """Where a batch of ``tp`` begins, held events included: where a rewind fetches from."""
        return (self.held.get(tp) or messages)[0].offset

    # -- restoring --------------------------------------------------------------------------------
    def restore_arrived(self) -> None:
        """Restore the latest snapshots of arrived partitions, plan their rebuilds, and let them
        be fetched. Nothing changes unless every broker call succeeds (the caller retries)."""
        arrived = sorted(self.arrived & self.assigned, key=lambda tp: (tp.topic, tp.partition))
        if not arrived:
            self.arrived.clear()
            return
        bounds = self._bounds(arrived)
        logger.debug("restoring %s: %s", ", ".join(f"{tp.topic}-{tp.partition}" for tp in arrived),
                     "; ".join(f"{tp.partition}: log {b.start}..{b.end}, committed {b.committed}"
                               for tp, b in bounds.items()))
        done = [f"{tp.topic}-{tp.partition}" for tp, b in bounds.items() if b.committed is not None
                and b.committed >= b.end]
        if done:
            logger.info("group %r has already consumed every event of %s (committed offset = end offset): "
                        "waiting for new ones", self.settings.kafka.group_id, ", ".join(done))
        snapshots = self.store.latest(arrived, bounds, self.snapshot_lead())
        for tp in arrived:
            self.states.pop(tp, None)
            self.parsers.pop(tp, None)
            if tp in snapshots:
                self._adopt(tp, snapshots[tp])
            self._plan_rebuild(tp, bounds[tp])
            self.consumer.resume(tp)
        self.arrived.clear()

    def snapshot_lead(self) -> int:
        """How far a true snapshot can be ahead of the group's committed offset: none exactly once
        (one transaction), one batch at least once (a batch holds at most max_poll_records polled
        events, plus the events held while its partition's channels were being decided)."""
        if self.settings.kafka.exactly_once:
            return 0
        return self.settings.kafka.max_poll_records + SCHEMA_PATIENCE * self.settings.events.schema_sample

    def _bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, LogBounds]:
        """The partitions' log start and end offsets, the group's commits and the topics' ids."""
        starts, ends = self.consumer.beginning_offsets(tps), self.consumer.end_offsets(tps)
        cluster = getattr(getattr(self.consumer, "_client", None), "cluster", None)
        topic_id = getattr(cluster, "topic_id", None)  # kafka-python 3: the id from the metadata
        ids = {tp.topic: topic_id(tp.topic) if topic_id else None for tp in tps}
        return {tp: LogBounds(starts[tp], ends[tp], self.consumer.committed(tp),
                              str(ids[tp.topic]) if ids[tp.topic] else None) for tp in tps}

    def _adopt(self, tp: TopicPartition, snap: Snapshot) -> None:
        det = snap.detector
        parser = self.parser(tp)
        if parser.channels is not None and parser.channels != det.config.names:
            raise WorkerError(f"{snap.source} was built for channels {', '.join(det.config.names)}, "
                              f"not {', '.join(parser.channels)}: move it away to start afresh")
        parser.channels = det.config.names
        wanted = self.settings.detector.to_config(len(det.config.names), det.config.names)
        changed = sorted(k for k, v in wanted.to_dict().items() if det.config.to_dict()[k] != v)
        if changed:
            logger.warning("%s keeps its saved detector settings; these differ from the current ones: %s",
                           snap.source, ", ".join(changed))
        self.states[tp] = PartitionState(det, snap.next_offset, time.monotonic())
        logger.info("restored detector of %s-%d from %s (%d events seen, next offset %d)", tp.topic, tp.partition,
                    snap.source, det.events_seen, snap.next_offset)

    def _plan_rebuild(self, tp: TopicPartition, bounds: LogBounds) -> None:
        """Seek back to where the restored state (or the partition) begins when the group's committed
        offset is ahead of it: those events rebuild the detector and publish nothing."""
        committed = bounds.committed
        state = self.states.get(tp)
        if committed is None:  # the group starts where auto_offset_reset says (a kept snapshot is at the log start)
            return
        start = state.next_offset if state is not None else bounds.start
        if start < committed:
            self.consumer.seek(tp, start)
            self.rebuild_until[tp] = committed
            logger.info("rebuilding the detector of %s-%d from offset %d up to the committed %d, publishing nothing",
                        tp.topic, tp.partition, start, committed)

    def live_from(self, tp: TopicPartition, messages: list[Any]) -> int:
        """The first offset of ``tp`` to publish for; ends the rebuild when ``messages`` reach it."""
        live_from = self.rebuild_until.get(tp, -1)
        if messages and messages[-1].offset + 1 >= live_from >= 0:
            del self.rebuild_until[tp]
            logger.info("rebuilt the detector of %s-%d up to offset %d: publishing again", tp.topic, tp.partition,
                        live_from)
        return live_from

    # -- channels and detectors -------------------------------------------------------------------
    def parser(self, tp: TopicPartition) -> EventParser:
        parser = self.parsers.get(tp)
        if parser is None:
            e = self.settings.events
            parser = self.parsers[tp] = EventParser(e.channels, e.allow_unknown_channels, e.max_event_bytes)
        return parser

    def hold_until_channels_known(self, tp: TopicPartition, messages: list[Any]) -> list[Any] | None:
        """Without configured channels, a partition's first ``schema_sample`` valid events fix them
        by majority. Events before that decision are held, uncommitted (None: still holding), then
        returned to be processed with it; a restart holds and decides the same events again.

        The decision is taken in windows of ``SCHEMA_PATIENCE x schema_sample`` events from the
        first held one: the first window that holds a valid event decides, once it has
        ``schema_sample`` of them or is complete. A complete window without a valid event is
        returned on its own, ahead of the rest (its events are dead letters, committed up to its
        end), while the rest is still held: a long run of malformed events neither stops the
        partition nor takes the valid events after it down with it."""
        parser = self.parser(tp)
        if parser.channels is not None:
            return messages
        held = self.held.setdefault(tp, [])
        held.extend(messages)
        e = self.settings.events
        window = SCHEMA_PATIENCE * e.schema_sample
        start = 0
        while True:
            # the same events decide whatever the polls' sizes (windows begin at the first held
            # event, which is where the partition, or the last returned window, ended)
            considered = held[start:start + window]
            channels, valid = infer_channels([m.value for m in considered], e.max_event_bytes, limit=e.schema_sample)
            if valid == 0 and len(considered) == window:
                start += window  # a whole window of malformed events
                continue
            break
        if valid < e.schema_sample and len(considered) < window:  # undecided yet
            if start == 0:
                if len(held) == len(messages):  # the first of them
                    logger.info("%s-%d: holding events until %d valid ones fix the channels (or set "
                                "AE_EVENTS__CHANNELS)", tp.topic, tp.partition, e.schema_sample)
                return None
            self.held[tp] = held[start:]
            return held[:start]  # only malformed events: dead letters
        del self.held[tp]
        if channels is not None:
            parser.channels = channels
            logger.info("%s-%d: channels %s, the key set most of its first %d valid events carry", tp.topic,
                        tp.partition, ", ".join(channels), valid)
        return held  # without a valid event among them, every one is dead-lettered

    def state(self, tp: TopicPartition) -> PartitionState:
        state = self.states.get(tp)
        if state is None:
            channels = self.parser(tp).channels
            assert channels is not None, "a partition's channels are known before its first valid event"
            try:
                config = self.settings.detector.to_config(len(channels), channels)
            except SettingsError as exc:
                raise SettingsError(f"the events of {tp.topic}-{tp.partition} carry {len(channels)} channel(s) "
                                    f"({', '.join(channels)}): {exc}") from exc
            state = self.states[tp] = PartitionState(AutoencoderDetector(config))
        return state

    def snapshot(self, tp: TopicPartition, force: bool = False) -> Outgoing | None:
        """A partition's snapshot record when due (or forced), else None. Mid-rebuild a detector is
        behind the committed offset: the last snapshot is kept."""
        state = self.states.get(tp)
        if state is None or tp in self.rebuild_until:
            return None
        if not force and time.monotonic() - state.saved_at < self.settings.service.snapshot_interval:
            return None
        return self.store.snapshot(tp, state)
