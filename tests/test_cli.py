"""The ae-worker command line, run in-process: replay, evaluate, simulate, bad input, settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cli import main


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "sensors.csv"
    assert main(["simulate", "--output", str(path), "--events", "3000", "--seed", "1"]) == 0
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_simulate_writes_labelled_channels(recording: Path, capsys) -> None:
    header = recording.read_text().splitlines()[0].split(",")
    assert header[0] == "timestamp" and header[-1] == "anomaly" and len(header) == 10
    rows = recording.read_text().splitlines()[1:]
    assert len(rows) == 3000 and any(r.endswith(",1") for r in rows)


def test_replay_writes_one_line_per_row_in_order(recording: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    code = main(["replay", str(recording), "--output", str(out), "--time-column", "timestamp",
                 "--label-column", "anomaly", "--warmup", "300", "--emit-latent"])
    assert code == 0
    rows = lines(out)
    assert [r["index"] for r in rows] == list(range(3000))
    first, last = rows[0], rows[-1]
    assert first["threshold"] is None and first["score"] is None and first["is_anomaly"] is False
    assert first["alert"] is False and first["episode"] is None
    assert last["threshold"] > 0 and "anomaly" not in [c["channel"] for c in last["contributions"]]
    assert {"index", "time", "label", "score", "threshold", "is_anomaly", "contributions", "latent"} <= set(last)
    assert len(last["latent"]) == 3 and len(last["contributions"]) == 3
    assert not any(r["is_anomaly"] for r in rows[:300])
    flagged = [r for r in rows if r["is_anomaly"]]
    assert flagged and flagged[0]["alert"] is True and all(r["episode"] is not None for r in flagged)
    alerts = [r for r in rows if r["alert"]]
    closing = [r for r in rows if "episode_closed" in r]
    opened = sorted(set(r["episode"] for r in alerts))  # (a run that came back bigger pages again)
    assert opened == list(range(len(opened))) and [r["episode"] for r in alerts] == sorted(r["episode"] for r in alerts)
    assert [r["episode_closed"]["episode"] for r in closing] == list(range(len(closing)))
    assert len(opened) - len(closing) in (0, 1)  # the last episode may still be open at the end
    summary = capsys.readouterr().out
    assert "anomalies:" in summary and str(out) in summary
    assert f"alerts (pages: episodes opened or escalated): {len(alerts)}" in summary


def test_replay_to_stdout_puts_summary_on_stderr(recording: Path, capsys) -> None:
    assert main(["replay", str(recording), "--ignore-columns", "timestamp,anomaly"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3000
    assert "anomalies:" in captured.err and "anomalies:" not in captured.out


def test_bad_rows_are_reported_and_do_not_stop_the_run(tmp_path: Path, capsys) -> None:
    good = [f"{i},{i % 7}.5,{(i * 3) % 11}.25,0" for i in range(400)]
    bad = {50: "50,abc,1.0,0", 51: "51,,1.0,0", 52: "52,nan,1.0,0", 53: "53,inf,1.0,0", 54: "54,1.0",
           55: "55,1e300,1.0,0"}
    rows = [bad.get(i, row) for i, row in enumerate(good)]
    src = tmp_path / "with spaces.csv"
    src.write_text("t,temp a,press b,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["replay", str(src), "-o", str(out), "--time-column", "t", "--label-column", "label",
                 "--warmup", "100"]) == 0
    result = lines(out)
    assert [r["index"] for r in result] == list(range(400))
    reasons = {r["index"]: r["invalid"] for r in result if "invalid" in r}
    assert sorted(reasons) == [50, 51, 52, 53, 54, 55]
    assert "not a number" in reasons[50] and "missing" in reasons[51]
    assert "not finite" in reasons[52] and "not finite" in reasons[53] and "malformed" in reasons[54]
    assert "out of range" in reasons[55]
    errors = lines(Path(f"{out}.errors.jsonl"))
    assert [e["index"] for e in errors] == [50, 51, 52, 53, 54, 55] and errors[0]["raw"] == "50,abc,1.0,0"
    scored = [r for r in result if "invalid" not in r]
    assert all(r["score"] is None for r in scored[:100])  # warm-up: the model is not judged yet
    assert all(isinstance(r["score"], float) for r in scored[100:])
    assert "invalid: 6" in capsys.readouterr().out


def test_evaluate_json_and_plot(recording: Path, tmp_path: Path, capsys) -> None:
    png = tmp_path / "plot.png"
    code = main(["evaluate", str(recording), "--label-column", "anomaly", "--time-column", "timestamp",
                 "--warmup", "300", "--json", "--plot", str(png)])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["events"] == 2700 and metrics["judged_from"] == 300
    for name in ("precision", "recall", "f1", "far", "mar", "auc_pr"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["tp"] + metrics["fn"] == metrics["positives"] > 0
    assert metrics["alerts"] - metrics["false_alerts"] >= metrics["anomalies_alerted"]  # alerts inside anomalies
    assert 0 < metrics["anomalies_alerted"] <= metrics["labelled_anomalies"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_evaluate_text_report(recording: Path, capsys) -> None:
    assert main(["evaluate", str(recording), "--label-column", "anomaly", "--time-column", "timestamp"]) == 0
    out = capsys.readouterr().out
    assert "auc_pr" in out and "far" in out and "mar" in out and "labelled anomalies alerted" in out


def test_checkpoint_save_and_resume(recording: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "det.ckpt"
    common = [str(recording), "--ignore-columns", "timestamp,anomaly"]
    assert main(["replay", *common, "-o", str(tmp_path / "a.jsonl"), "--save-checkpoint", str(ckpt)]) == 0
    assert main(["replay", *common, "-o", str(tmp_path / "b.jsonl"), "--load-checkpoint", str(ckpt)]) == 0
    resumed = lines(tmp_path / "b.jsonl")
    assert resumed[0]["threshold"] is not None  # no second warm-up


def test_corrupt_checkpoint_is_refused_loudly(recording: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(b"AEWCKPT1" + b"\0" * 40)
    assert main(["replay", str(recording), "--load-checkpoint", str(ckpt)]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--bottleneck", "50"], {}, "AE_DETECTOR__BOTTLENECK"),
    (["--smoothing", "0"], {}, "invalid value for --smoothing: Input should be greater than 0 (got '0')"),
    (["--sep", ";;"], {}, "invalid value for --sep: String should have at most 1 character"),
    ([], {"AE_DETECTOR__THRESHOLD_K": "-1"}, "AE_DETECTOR__THRESHOLD_K"),
    ([], {"AE_DETECTOR__OUTPUT_ACTIVATION": "tanh"}, "AE_DETECTOR__OUTPUT_ACTIVATION"),
])
def test_invalid_settings_fail_at_start_naming_the_setting(recording, monkeypatch, capsys, argv, env, named) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["replay", str(recording), *argv]) == 2
    assert named in capsys.readouterr().err


def test_environment_settings_apply_and_flags_override(recording: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AE_DETECTOR__WARMUP", "1000")
    monkeypatch.setenv("AE_INPUT__IGNORE_COLUMNS", "timestamp,anomaly")
    out = tmp_path / "o.jsonl"
    assert main(["replay", str(recording), "-o", str(out)]) == 0
    assert lines(out)[999]["threshold"] is None and lines(out)[1000]["threshold"] is not None
    assert main(["replay", str(recording), "-o", str(out), "--warmup", "100"]) == 0
    assert lines(out)[100]["threshold"] is not None


def test_unknown_column_is_a_clear_error(recording: Path, capsys) -> None:
    assert main(["replay", str(recording), "--label-column", "nope"]) == 2
    assert "no column named 'nope'" in capsys.readouterr().err


def test_jsonl_recordings_and_sliding_window(tmp_path: Path) -> None:
    src = tmp_path / "rec.jsonl"
    assert main(["simulate", "-o", str(src), "--events", "600", "--features", "1"]) == 0
    out = tmp_path / "o.jsonl"
    assert main(["replay", str(src), "-o", str(out), "--time-column", "timestamp", "--label-column", "anomaly",
                 "--window", "8", "--warmup", "200"]) == 0
    rows = lines(out)
    assert len(rows) == 600 and rows[-1]["contributions"][0]["channel"] == "pump_pressure"


def test_default_replay_runs_on_the_embedded_recording(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo.jsonl"
    assert main(["replay", "-o", str(out)]) == 0
    assert len(lines(out)) == 20_000
    captured = capsys.readouterr()
    assert "simulated recording" in captured.err and "anomalies:" in captured.out


def test_a_recording_of_mostly_bad_rows_stops_with_a_hint(tmp_path: Path, capsys) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n" + "\n".join(["x,1", ",2", "nan,3"]) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["replay", str(src), "-o", str(out)]) == 2
    assert [r["index"] for r in lines(out)] == [0, 1, 2] and all("invalid" in r for r in lines(out))
    err = capsys.readouterr().err
    assert "column 'a' is invalid in 3 of 3 rows" in err and "--ignore-columns a" in err


def test_a_time_column_left_among_the_readings_is_named_in_the_hint(recording: Path, tmp_path: Path,
                                                                    capsys) -> None:
    # with another column said to be the time, 'timestamp' is taken for a reading: every row fails
    assert main(["replay", str(recording), "-o", str(tmp_path / "o.jsonl"), "--time-column", "pump_pressure"]) == 2
    err = capsys.readouterr().err
    assert "column 'timestamp' is invalid in 3000 of 3000 rows: is it the time column? --time-column timestamp" in err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_simulate_replay_evaluate_need_no_column_flags(tmp_path: Path, capsys, suffix: str) -> None:
    src, out, png = tmp_path / f"sim{suffix}", tmp_path / "o.jsonl", tmp_path / "p.png"
    assert main(["simulate", "-o", str(src), "--events", "1500", "--seed", "2"]) == 0
    capsys.readouterr()
    assert main(["replay", str(src), "-o", str(out), "--warmup", "300"]) == 0
    err = capsys.readouterr().err
    assert f"sim{suffix}: time 'timestamp', labels 'anomaly'; 8 reading column(s)" in err
    rows = lines(out)
    assert len(rows) == 1500 and not any("invalid" in r for r in rows)
    assert rows[0]["time"] and "label" in rows[0]
    assert all(c["channel"] != "anomaly" for r in rows[300:] for c in r["contributions"])  # no leak
    assert main(["evaluate", str(src), "--warmup", "300", "--json", "--plot", str(png)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["events"] == 1200 and metrics["positives"] > 0 and metrics["invalid"] == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_column_named_label_is_the_labels_and_changepoint_is_left_out(tmp_path: Path, capsys) -> None:
    src = tmp_path / "skab-like.csv"
    rows = [f"2026-01-01 00:{i // 60:02d}:{i % 60:02d};{i % 5}.5;{(i * 7) % 3}.25;{int(i > 250)};{int(i == 251)}"
            for i in range(300)]
    src.write_text("datetime;a;b;Label;changepoint\n" + "\n".join(rows) + "\n")
    assert main(["evaluate", str(src), "--warmup", "50", "--json"]) == 0  # the separator is found too
    captured = capsys.readouterr()
    assert ("separator ';', time 'datetime', labels 'Label', also left out: 'changepoint'; 2 reading column(s)"
            in captured.err)
    assert json.loads(captured.out)["positives"] == 49


def test_evaluate_without_labels_is_a_clear_error(tmp_path: Path, capsys) -> None:
    src = tmp_path / "plain.csv"
    src.write_text("a,b\n" + "\n".join(f"{i},{2 * i}" for i in range(20)) + "\n")
    assert main(["evaluate", str(src), "--plot", str(tmp_path / "p.png")]) == 2
    assert "no label column" in capsys.readouterr().err


def test_evaluate_plots_a_single_row(recording: Path, tmp_path: Path, capsys) -> None:
    one = tmp_path / "one.csv"
    one.write_text("\n".join(recording.read_text().splitlines()[:2]) + "\n")
    png = tmp_path / "one.png"
    assert main(["evaluate", str(one), "--plot", str(png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 0 and png.exists()


def test_plots_take_scores_a_log_scale_cannot_show(tmp_path: Path) -> None:
    import numpy as np

    from worker.replay.plotting import plot_replay

    index = np.arange(4)
    for score in (np.array([0.0, 1.0, 2.0, 0.5]), np.full(4, np.nan), np.array([-1.0, 0.0, np.nan, 3.0])):
        plot_replay(tmp_path / "p.png", index, score, np.full(4, np.nan), np.zeros(4, bool), None, "edge")
        assert (tmp_path / "p.png").stat().st_size > 1000
    plot_replay(tmp_path / "e.png", index[:0], index[:0] * 1.0, index[:0] * 1.0, np.zeros(0, bool), None, "empty")
    assert (tmp_path / "e.png").exists()


def test_stress_stream_replays_with_one_alert_and_an_accepted_regime_change(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "step.csv", tmp_path / "out.jsonl"
    assert main(["simulate", "--stress", "step", "--events", "4000", "--features", "4", "-o", str(src)]) == 0
    assert "step stress stream" in capsys.readouterr().out
    assert main(["replay", str(src), "-o", str(out), "--time-column", "timestamp", "--label-column", "anomaly"]) == 0
    rows = lines(out)
    changed = [r for r in rows if r.get("regime_change")]
    assert len(changed) == 1 and 2000 <= changed[0]["index"] <= 2300
    assert [r["index"] for r in rows if r["alert"] and r["index"] >= 2000] == [2000]
    closing = [r["episode_closed"] for r in rows if "episode_closed" in r and r["episode_closed"]["accepted_as_normal"]]
    assert closing and closing[0]["episode"] == changed[0]["episode"]
    assert "new normal accepted: 1" in capsys.readouterr().out


def test_the_command_as_a_process_gives_the_same_output(recording: Path, tmp_path: Path) -> None:
    """As a process of its own the command runs with the imports' objects frozen out of the
    garbage collector's sight (``settled_garbage_collector``): same output, a clean exit."""
    assert main(["replay", str(recording), "-o", str(tmp_path / "in_process.jsonl")]) == 0
    done = subprocess.run([sys.executable, "-m", "worker", "replay", str(recording), "-o",
                           str(tmp_path / "process.jsonl")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "process.jsonl").read_bytes() == (tmp_path / "in_process.jsonl").read_bytes()
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr


def test_every_flag_has_help_and_enumerated_settings_are_choices(capsys) -> None:
    from worker.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert "--create-topics" not in commands["record"].format_help()  # record creates nothing
    text = commands["run"].format_help()
    assert "--threshold-rule {sigma,quantile,spot}" in text and "--score-aggregate {mean,max}" in text
    assert "(default: 4.0)" in text and "(default: 127.0.0.1:9092)" in text and "(default: 32,16)" in text
    assert "(default: 20000)" in commands["simulate"].format_help()
    with pytest.raises(SystemExit) as exc:
        main(["replay", "x.csv", "--threshold-rule", "foo"])
    assert exc.value.code == 2
    assert "invalid choice: 'foo' (choose from 'sigma', 'quantile', 'spot')" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "suggested"), [
    ("AE_DETECTR__THRESHOLD_K", "AE_DETECTOR__THRESHOLD_K"),
    ("AE_DETECTOR_THRESHOLD_K", "AE_DETECTOR__THRESHOLD_K"),
    ("AE_KAFKA__BOOTSTRAP_SERVER", "AE_KAFKA__BOOTSTRAP_SERVERS"),
    ("ae_log_levl", "AE_LOG_LEVEL"),
])
def test_a_variable_that_names_no_setting_is_an_error(recording: Path, monkeypatch, capsys, name: str,
                                                      suggested: str) -> None:
    monkeypatch.setenv(name, "3")
    assert main(["replay", str(recording)]) == 2
    assert f"unknown setting {name} in the environment (did you mean {suggested}?)" in capsys.readouterr().err


def test_a_typo_in_the_dotenv_file_is_an_error_and_the_scripts_variables_are_not(
        recording: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AE_KAFKA_PORT", "19092")  # scripts/kafka/broker.sh's own variables
    monkeypatch.setenv("AE_KAFKA_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AE_DETECTOR__WARMUP=100\nAE_DETECTOR__TRESHOLD_K=3\n")
    assert main(["replay", str(recording), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown setting AE_DETECTOR__TRESHOLD_K in the .env file (did you mean AE_DETECTOR__THRESHOLD_K?)" in \
        capsys.readouterr().err
    (tmp_path / ".env").write_text("AE_DETECTOR__WARMUP=100\n")
    assert main(["replay", str(recording), "-o", str(tmp_path / "o.jsonl")]) == 0


def test_a_replay_without_invalid_rows_leaves_no_errors_file(recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stale = tmp_path / "out.jsonl.errors.jsonl"
    stale.write_text('{"index": 1, "invalid": "from an earlier run"}\n')
    assert main(["replay", str(recording), "-o", str(out)]) == 0
    assert out.exists() and not stale.exists()


def test_plots_mark_alerts_and_new_normals_on_the_recordings_time_axis(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    import matplotlib.pyplot as plt
    import numpy as np

    from worker.replay import plotting

    times = np.array(["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01 00:02:00"], dtype=object)
    parsed = plotting.time_axis(times, 3)
    assert parsed is not None and parsed[0] == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert plotting.time_axis(np.array(["12", "x", "y"], dtype=object), 3) is None  # row numbers then
    assert plotting.time_axis(None, 3) is None
    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, path, **kw):  # type: ignore[no-untyped-def]
        ax = fig.axes[0]
        drawn.update(xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel(),
                     legend=[t.get_text() for t in ax.get_legend().get_texts()])
        real_savefig(fig, path, **kw)

    score = np.array([1.0, 9.0, 2.0])
    try:
        plt.Figure.savefig = keep  # type: ignore[method-assign]
        plotting.plot_replay(tmp_path / "p.png", np.arange(3), score, np.full(3, 5.0), score > 5, None, "t",
                             alerts=score > 5, regime_changes=np.array([False, False, True]), times=times)
    finally:
        plt.Figure.savefig = real_savefig  # type: ignore[method-assign]
    assert drawn == {"xlabel": "time", "ylabel": "score",
                     "legend": ["score", "threshold", "flagged", "alert", "new normal accepted"]}
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever a library logs (kafka-python dumps its configuration at debug level), a password
    or the snapshot key is written as ***."""
    import logging

    from worker.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("DEBUG", False, ("s3cret-password", "k3y-k3y-k3y-k3y-k3y", "ab"))
        logging.getLogger("worker.test").warning("config %s", {"sasl_plain_password": "s3cret-password"})
        logging.getLogger("worker.test").error("key k3y-k3y-k3y-k3y-k3y; a word: about")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "s3cret-password" not in err and "k3y-k3y" not in err
    assert err.count("***") == 2 and "about" in err  # (secrets shorter than 4 characters are not looked for)
