"""Episodes: runs of flagged events of one key, what pages a person; and accepting a new normal.

An episode of a key opens at a flagged event (its *alert*) and stays open while flags keep
coming; after ``quiet`` consecutive events of that key without a flag, the event that completes
the quiet period closes it. Every event of the key while it is open belongs to it. Ids count up
per detector, so they are unique within one detector (one Kafka partition, one replay).

An episode still open ``adapt_after`` events of its key after its alert is no longer a fault but a
new operating point (a level shift that stays, a recalibrated sensor): the detector *accepts* it
at that event (``accepted``) and from then on learns the key's flagged events as normal, until the
episode closes; an accepted episode closes only after ``max(quiet, adapt_after)`` quiet events, so
the last flags while the model catches up (aftershocks of the same change) page nobody again.
A fault longer than ``adapt_after`` is therefore reported (one alert) and then learned, and so is
anything else on that key until it has settled; ``adapt_after=None`` never accepts.

With ``plateau`` P, an episode is accepted earlier, as soon as its key's score has *stopped
changing*: its last P events all flagged and the mean log score of their second half within
``PLATEAU_CHANGE`` of their first half's (a level the key now sits at, e.g. a server settling at a
new load after an incident). A fault whose score keeps moving (flags that come and go, a drift
whose score keeps growing) is still reported until ``adapt_after``. A drift counts by its score,
not its readings: where the network's output follows part of it, or its residuals are past
``clip``, a growing drift can score as a plateau. With ``adapt_after=None`` nothing is accepted,
plateaus included.

With ``escalate`` E, a run of flags that comes back inside an open episode that is not accepted
(flags after at least one unflagged event of the key) pages again (``alert``), once, at its first
flag whose score reaches E times the highest score of the episode's earlier runs: a real fault
that begins while an earlier blip's episode of the same key is still open is not hidden behind
the blip's page. Blips of about the same size (a flapping key) stay one page however many come,
and so does one run of flags, however its score grows.

With a ``hold`` level (hysteresis), an event of a key whose episode is open and not accepted is
flagged when its score exceeds that lower level, not only the threshold: a fault whose score dips
between its peaks stays one run of flags instead of flickering. The caller passes the level per
segment (it moves only at batch ends); the update says which events were judged against it
(``held_level``) and which it flagged that the threshold alone would not (``held``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

NONE = -1
# Largest change of the mean log score between the two halves of the last ``plateau`` events
# that still counts as a plateau (0.1: the score moved by less than about 10%).
PLATEAU_CHANGE = 0.1


@dataclass
class ClosedEpisode:
    """What an episode was, reported by the event that closed it."""

    episode: int
    key: str
    events: int  # events of the key from the alert to the last flagged one
    flagged: int
    peak_score: float
    accepted: bool  # the detector accepted a new normal during it


@dataclass
class EpisodeUpdate:
    """Per event of a segment: its open episode (or -1), whether it is the alert, the episode it
    closed (or -1), whether a new normal was accepted at it, whether it is learned although
    flagged (it belongs to an accepted episode), and what the hold level did to it."""

    episode: np.ndarray
    alert: np.ndarray
    closed: np.ndarray
    accepted: np.ndarray
    adapting: np.ndarray
    held_level: np.ndarray  # judged against the hold level: its key's episode was open and not accepted
    held: np.ndarray  # flagged by the hold level alone
    closed_episodes: dict[int, ClosedEpisode] = field(default_factory=dict)  # row -> what it closed


@dataclass
class _Open:
    episode: int
    age: int = 0  # events of the key since the alert, the alert included
    quiet: int = 0  # events of the key since the last flag
    last_flag_age: int = 0
    flagged: int = 0
    peak_score: float = 0.0
    accepted: bool = False
    recent: deque[float] = field(default_factory=deque)  # log scores of the last plateau events, if flagged
    escalate_at: float = math.inf  # the score at which the current run of flags pages again (escalate)


class EpisodeTracker:
    """Opens, extends and closes the episodes of each key, event by event."""

    def __init__(self, quiet: int, adapt_after: int | None, plateau: int | None = None,
                 escalate: float | None = None) -> None:
        self.quiet = quiet
        self.escalate = escalate
        self.adapt_after = adapt_after
        self.plateau = plateau if adapt_after is not None else None  # adapt_after=None: never accept
        # An accepted episode stays open (learning) until the key has been quiet this long: the
        # network is still catching up with the new normal, and its last flags are aftershocks
        # of the same change, not new faults to page anyone about.
        self.settle = max(quiet, adapt_after or 0)
        self.open: dict[str, _Open] = {}
        self.next_id = 0

    def update(self, flags: np.ndarray, scores: np.ndarray, keys: np.ndarray | None,
               hold: float | None = None) -> EpisodeUpdate:
        """Episodes after the events of a segment (``flags``: over the threshold); with ``hold``,
        events of open, unaccepted episodes are flagged above that level too (``out.held``)."""
        n = len(flags)
        out = EpisodeUpdate(np.full(n, NONE, dtype=np.int64), np.zeros(n, dtype=bool),
                            np.full(n, NONE, dtype=np.int64), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool),
                            np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
        if not self.open and not flags.any():
            return out
        key_list = [""] * n if keys is None else keys.tolist()
        for i, (flag, key) in enumerate(zip(flags.tolist(), key_list)):
            ep = self.open.get(key)
            if ep is None and not flag:
                continue
            if ep is not None and hold is not None and not ep.accepted:
                out.held_level[i] = True
                if not flag and scores[i] > hold:
                    flag = out.held[i] = True
            if ep is None:
                ep = self.open[key] = _Open(self.next_id)
                self.next_id += 1
                out.alert[i] = True
            ep.age += 1
            if flag:
                score = float(scores[i])
                if self.escalate is not None and not ep.accepted:
                    if ep.quiet:  # a run comes back
                        ep.escalate_at = self.escalate * ep.peak_score
                    if score >= ep.escalate_at:
                        out.alert[i] = True
                        ep.escalate_at = math.inf
                ep.quiet = 0
                ep.flagged += 1
                ep.last_flag_age = ep.age
                ep.peak_score = max(ep.peak_score, score)
                if self.plateau is not None and not ep.accepted:
                    ep.recent.append(math.log(max(score, 1e-300)))
                    if len(ep.recent) > self.plateau:
                        ep.recent.popleft()
            else:
                ep.recent.clear()  # a plateau is flagged throughout
                ep.quiet += 1
                if ep.quiet >= (self.settle if ep.accepted else self.quiet):
                    out.closed[i] = ep.episode
                    out.closed_episodes[i] = ClosedEpisode(ep.episode, key, ep.last_flag_age, ep.flagged,
                                                           ep.peak_score, ep.accepted)
                    del self.open[key]
                    continue
            out.episode[i] = ep.episode
            if not ep.accepted and ((self.adapt_after is not None and ep.age >= self.adapt_after)
                                    or self._on_plateau(ep)):
                ep.accepted = True
                ep.recent.clear()
                out.accepted[i] = True
            out.adapting[i] = ep.accepted
        return out

    def _on_plateau(self, ep: _Open) -> bool:
        if self.plateau is None or len(ep.recent) < self.plateau:
            return False
        half = self.plateau // 2
        values = list(ep.recent)
        first = sum(values[:half]) / half
        second = sum(values[-half:]) / half
        return abs(second - first) <= PLATEAU_CHANGE

    def forget(self, key: str) -> None:
        """Drop a key's open episode, unclosed (the key was evicted: no event of it will close it)."""
        self.open.pop(key, None)

    def state(self) -> dict[str, object]:
        return {"next_id": self.next_id,
                "open": {k: [e.episode, e.age, e.quiet, e.last_flag_age, e.flagged, e.peak_score, int(e.accepted),
                             list(e.recent), None if math.isinf(e.escalate_at) else e.escalate_at]
                         for k, e in self.open.items()}}

    def load_state(self, state: dict[str, object]) -> None:
        self.next_id = int(state["next_id"])  # type: ignore[call-overload]
        self.open = {}
        for key, (episode, age, quiet, last, flagged, peak, accepted, *rest) in state["open"].items():  # type: ignore[attr-defined]
            # (checkpoints before plateaus were tracked hold seven fields: no recent scores; before
            # escalation, eight: the current run does not page again)
            recent = rest[0] if rest else []
            escalate_at = rest[1] if len(rest) > 1 and rest[1] is not None else math.inf
            self.open[str(key)] = _Open(int(episode), int(age), int(quiet), int(last), int(flagged), float(peak),
                                        bool(accepted), deque(float(v) for v in recent), float(escalate_at))
