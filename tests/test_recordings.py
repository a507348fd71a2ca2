"""Recordings read fast give exactly what the csv module row by row gives: values to the bit,
the same bad rows with the same reasons, the same times, keys and labels, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.replay.sources import Recording, RowBatch
from worker.settings import InputSettings

OPTIONS = InputSettings(time_column="ts", key_column="device", label_column="anomaly")


def lines_of(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-8, 8, size=(n, 3))
    return [f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d},dev-{i % 3},{repr(a)},{repr(b)},{repr(c)},{i % 2}"
            for i, (a, b, c) in enumerate(values.tolist())]


BAD = {
    7: "2026-01-01T00:00:07,dev-1,,1.0,2.0,0",                   # missing value
    40: "2026-01-01T00:00:40,dev-1,abc,1.0,2.0,0",               # not a number
    41: "2026-01-01T00:00:41,dev-1,1.0,2.0,0",                   # a column short
    42: "",                                                     # blank line
    90: "2026-01-01T00:01:30,dev-2,1e999,1.0,2.0,0",            # not finite
    91: "2026-01-01T00:01:31,dev-2,1e300,1.0,2.0,0",            # out of range
    92: "2026-01-01T00:01:32,dev-2,1.0,2.0,3.0,4.0,0",          # a column too many
    150: "2026-01-01T00:02:30,dev-0,1.0,2.0,3.0,nan",           # label not finite
}


# valid, but NumPy's reader refuses it: its chunk goes row by row, with the same result
VALID_SLOW = {93: "2026-01-01T00:01:33,dev-2,1_000,2.0,3.0,0"}


def read(path: Path, chunk_size: int) -> tuple[RowBatch, list[int]]:
    batches = list(Recording(path, OPTIONS, chunk_size=chunk_size).batches())
    merged = RowBatch(index=np.concatenate([b.index for b in batches]),
                      values=np.concatenate([b.values for b in batches]),
                      times=[t for b in batches for t in b.times or []],
                      keys=[k for b in batches for k in b.keys or []],
                      labels=np.concatenate([b.labels for b in batches if b.labels is not None]),
                      bad=[x for b in batches for x in b.bad])
    return merged, [len(b.index) + len(b.bad) for b in batches]


def write(path: Path, rows: list[str], quoted: bool) -> Path:
    header = "ts,device,a,b,c,anomaly"
    if quoted:  # the same rows with the time quoted: read by the csv module only
        rows = [f'"{r.split(",", 1)[0]}",{r.split(",", 1)[1]}' if "," in r else r for r in rows]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("chunk_size", [1, 16, 4096])
def test_the_fast_reader_equals_the_csv_module_row_by_row(tmp_path: Path, chunk_size: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fast_chunks = []
    original = Recording._csv_lines_fast_path

    def spy(self: Recording, *args: object) -> RowBatch | None:
        out = original(self, *args)  # type: ignore[arg-type]
        fast_chunks.append(out is not None)
        return out

    monkeypatch.setattr(Recording, "_csv_lines_fast_path", spy)
    rows = lines_of(300)
    for i, line in {**BAD, **VALID_SLOW}.items():
        rows[i] = line
    fast, sizes = read(write(tmp_path / "plain.csv", rows, quoted=False), chunk_size)
    assert not all(fast_chunks) and (any(fast_chunks) or chunk_size >= 300)  # both paths, where chunks allow
    fast_chunks.clear()
    slow, _ = read(write(tmp_path / "quoted.csv", rows, quoted=True), chunk_size)
    assert not fast_chunks  # the csv module throughout
    assert sum(sizes) == 300 and all(size == chunk_size for size in sizes[:-1])
    np.testing.assert_array_equal(fast.index, slow.index)
    assert fast.values.tobytes() == slow.values.tobytes()  # to the bit
    assert fast.times == slow.times and fast.keys == slow.keys
    np.testing.assert_array_equal(fast.labels, slow.labels)
    assert [(i, reason) for i, reason, _ in fast.bad] == [(i, reason) for i, reason, _ in slow.bad]
    assert [i for i, _, _ in fast.bad] == sorted(BAD)
    assert [raw for _, _, raw in fast.bad] == [BAD[i] for i in sorted(BAD)]
    reasons = dict((i, reason) for i, reason, _ in fast.bad)
    assert reasons[7] == "column 'a': missing value" and "not finite" in reasons[90]
    assert "cannot split" in reasons[41] and "cannot split" in reasons[42]
    assert fast.values[list(fast.index).index(93)].tolist() == [1000.0, 2.0, 3.0]


def test_values_are_those_python_float_reads(tmp_path: Path) -> None:
    rows = lines_of(500, seed=4)
    fast, _ = read(write(tmp_path / "plain.csv", rows, quoted=False), 128)
    expected = np.array([[float(v) for v in r.split(",")[2:5]] for r in rows])
    assert fast.values.tobytes() == expected.tobytes() and not fast.bad
