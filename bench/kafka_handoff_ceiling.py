"""How fast can kafka-python consume if every record is merely handed to a second process?

    scripts/kafka/broker.sh up
    python bench/kafka_handoff_ceiling.py [--bootstrap 127.0.0.1:9092] [--events 200000]

The ceiling of any design that moves scoring out of the consuming process: the second process
only receives the records and counts them. On a 2-core machine that also runs the broker this
already costs more than half of the bare rate (see README), which is why ``ae-worker run`` keeps
parsing, scoring and publishing in the consuming process and scales out by partitions instead.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kafka_throughput import bare_rate, fill  # noqa: E402
from worker.kafka.kafka_io import ensure_topics  # noqa: E402
from worker.replay.simulate import simulate  # noqa: E402
from worker.settings import load_settings  # noqa: E402


def receiver(conn: Connection) -> None:
    received = 0
    while (batch := conn.recv()) is not None:
        received += len(batch)
    conn.send(received)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    topic = f"handoff-{uuid.uuid4().hex[:8]}"
    ensure_topics(load_settings(kafka={"bootstrap_servers": args.bootstrap}).kafka, [topic], create=True)
    fill(args.bootstrap, topic, simulate(args.events, 8, seed=0)[0])
    bare = bare_rate(args.bootstrap, topic, args.events, 2000)
    ours, theirs = mp.Pipe()
    child = mp.get_context("spawn").Process(target=receiver, args=(theirs,))
    child.start()
    handed = bare_rate(args.bootstrap, topic, args.events, 2000,
                       lambda messages: ours.send([(m.offset, m.key, m.value, m.timestamp) for m in messages]))
    ours.send(None)
    assert ours.recv() == args.events
    child.join()
    print(f"bare kafka-python consume        : {bare:>10,.0f} events/s")
    print(f"consume + hand off to a process  : {handed:>10,.0f} events/s   ratio {handed / bare:.2f}")


if __name__ == "__main__":
    main()
