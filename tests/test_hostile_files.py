"""Recordings as users have them: broken quoting, huge lines, wide headers, stdin, gzip, the
event schema, one reading column, separators and decimal commas. No traceback, no row lost with
exit 0: each run reads every row it can and reports the others, or stops with one clear line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from worker.cli import main
from worker.replay.simulate import simulate, write_recording

ROWS = 1200


@pytest.fixture(scope="module")
def sensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "sensors.csv"
    X, labels, _ = simulate(ROWS, 4, seed=2)
    write_recording(path, X, labels)
    return path


def output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def flags(path: Path) -> list[int]:
    return [r["index"] for r in output(path) if r.get("is_anomaly")]


def replay(*args: str) -> int:
    return main(["replay", *args, "--warmup", "200"])


def test_an_unterminated_quote_loses_only_its_own_row(sensors: Path, tmp_path: Path, capsys) -> None:
    lines = sensors.read_text().splitlines()
    lines[151] = lines[151].replace(",", ',"', 1)  # row 150 (line 152) opens a quote it never closes
    src = tmp_path / "quote.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert replay(str(src), "-o", str(out)) == 0
    rows = output(out)
    assert len(rows) == ROWS and [r["index"] for r in rows] == list(range(ROWS))
    bad = [r for r in rows if "invalid" in r]
    assert [r["index"] for r in bad] == [150]
    assert bad[0]["invalid"].startswith("unreadable CSV row at line 152: a quote opened in it is never closed")
    assert "rows: 1200  scored: 1199  invalid: 1" in capsys.readouterr().out


def test_a_field_over_the_limit_is_one_bad_row(sensors: Path, tmp_path: Path, capsys) -> None:
    lines = sensors.read_text().splitlines()
    time, rest = lines[300].split(",", 1)
    lines[300] = f"{time},{'9' * (17 << 20)}{rest[rest.index(','):]}"  # a 17 MB reading
    src = tmp_path / "long.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert replay(str(src), "-o", str(out)) == 0
    bad = [r for r in output(out) if "invalid" in r]
    assert [r["index"] for r in bad] == [299] and "field larger than field limit" in bad[0]["invalid"]
    assert "scored: 1199  invalid: 1" in capsys.readouterr().out


def test_limits_and_unwritable_outputs_are_one_line_errors(sensors: Path, tmp_path: Path, capsys) -> None:
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(50_000)) + "\n" + ",".join(["1"] * 50_000) + "\n")
    assert replay(str(wide)) == 2
    assert "the header has 50000 or more columns; at most 10000 are read" in capsys.readouterr().err
    assert replay(str(sensors), "-o", str(tmp_path)) == 2  # a directory
    assert f"cannot write {tmp_path}: Is a directory" in capsys.readouterr().err
    assert replay(str(tmp_path / "missing.csv")) == 2
    assert "missing.csv: cannot read: No such file or directory" in capsys.readouterr().err


def test_stdin_and_gzip_read_as_the_file_itself(sensors: Path, tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.jsonl"
    assert replay(str(sensors), "-o", str(plain)) == 0
    packed = tmp_path / "sensors.csv.gz"
    packed.write_bytes(gzip.compress(sensors.read_bytes()))
    from_gz = tmp_path / "gz.jsonl"
    assert replay(str(packed), "-o", str(from_gz)) == 0
    assert from_gz.read_bytes() == plain.read_bytes() and flags(plain)
    proc = subprocess.run([sys.executable, "-m", "worker", "replay", "-", "-o", str(tmp_path / "stdin.jsonl"),
                           "--warmup", "200"], input=sensors.read_bytes(), cwd=ROOT, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "stdin.jsonl").read_bytes() == plain.read_bytes()
    assert proc.stderr.decode().startswith("stdin: time 'timestamp', labels 'anomaly'; 4 reading column(s)")


def test_json_lines_in_the_event_schema_replay_with_readings_as_channels(sensors: Path, tmp_path: Path,
                                                                          capsys) -> None:
    header, *rows = sensors.read_text().splitlines()
    names = header.split(",")
    events = tmp_path / "events.jsonl"
    with events.open("w") as fh:
        for line in rows:
            row = dict(zip(names, line.split(",")))
            readings = {k: float(v) for k, v in row.items() if k not in ("timestamp", "anomaly")}
            fh.write(json.dumps({"key": "pump-1", "timestamp": row["timestamp"], "readings": readings,
                                 "anomaly": int(row["anomaly"]), "site": "north"}) + "\n")
    from_events, from_csv = tmp_path / "e.jsonl", tmp_path / "c.jsonl"
    assert replay(str(events), "-o", str(from_events)) == 0
    described = capsys.readouterr().err
    assert "events with readings, time 'timestamp', key 'key', labels 'anomaly'; 4 reading column(s)" in described
    assert replay(str(sensors), "-o", str(from_csv)) == 0
    assert flags(from_events) == flags(from_csv) and flags(from_csv)


def test_one_reading_column_asks_for_a_window(tmp_path: Path, capsys) -> None:
    nab = tmp_path / "nab.csv"
    values = 10 + np.sin(np.arange(800) / 10) + 0.1 * np.random.default_rng(0).normal(size=800)
    nab.write_text("timestamp,value\n" + "\n".join(f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d},{v}"
                                                   for i, v in enumerate(values)) + "\n")
    assert replay(str(nab)) == 2
    assert "one reading column ('value'); the autoencoder needs two inputs or more: --window W" in \
        capsys.readouterr().err
    assert replay(str(nab), "--window", "16", "-o", str(tmp_path / "o.jsonl")) == 0


def test_an_explicit_separator_wins_and_a_wrong_one_is_named(sensors: Path, tmp_path: Path, capsys) -> None:
    assert replay(str(sensors), "--sep", ";") == 2  # a comma file read with ';'
    assert "splits into one reading column on ';' but holds ',': is the separator right? --sep ','" in \
        capsys.readouterr().err
    named = tmp_path / "units.csv"  # ';'-separated, commas inside the column names
    named.write_text("time;flow,l/s;pressure,bar\n" + "\n".join(f"{i};{i % 7}.5;{i % 5}.25" for i in range(500)))
    assert replay(str(named), "--sep", ";", "-o", str(tmp_path / "o.jsonl")) == 0
    assert "separator ';', time 'time'; 2 reading column(s)" in capsys.readouterr().err


def test_decimal_commas_get_their_own_hint(tmp_path: Path, capsys) -> None:
    src = tmp_path / "eu.csv"
    src.write_text("time;a;b\n" + "\n".join(f"{i};0,{i % 97:03d};1,5" for i in range(300)) + "\n")
    assert replay(str(src)) == 2
    assert "decimal commas are not read" in capsys.readouterr().err


def test_a_bom_before_the_header_is_not_part_of_a_column_name(sensors: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "bom.csv"
    src.write_bytes(b"\xef\xbb\xbf" + sensors.read_bytes())
    assert replay(str(src), "-o", str(tmp_path / "o.jsonl")) == 0
    assert "bom.csv: time 'timestamp', labels 'anomaly'; 4 reading column(s)" in capsys.readouterr().err


def test_replay_errors_never_end_in_a_traceback(tmp_path: Path) -> None:
    binary = tmp_path / "blob.csv"
    binary.write_bytes(bytes(range(256)) * 10)
    for args in (["replay", str(binary)], ["replay", str(tmp_path)], ["evaluate", str(tmp_path / "none.csv")]):
        proc = subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, capture_output=True,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(b"ae-worker: error: ")
