"""Settings: environment, secrets, and how they reach kafka-python."""

from __future__ import annotations

import logging

import pytest

from worker.errors import SettingsError
from worker.kafka.kafka_io import connection_config
from worker.settings import load_settings


def test_secrets_never_show_in_repr_or_logs(monkeypatch, caplog) -> None:
    monkeypatch.setenv("AE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("AE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("AE_KAFKA__SASL_USERNAME", "svc-ae")
    monkeypatch.setenv("AE_KAFKA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("AE_KAFKA__SSL_CAFILE", "/etc/ssl/ca.pem")
    s = load_settings()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s", s)
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in caplog.text
    config = connection_config(s.kafka)
    assert config["sasl_plain_password"] == "hunter2-secret"  # unwrapped only for the client
    assert config["sasl_mechanism"] == "SCRAM-SHA-512" and config["security_protocol"] == "SASL_SSL"
    assert config["ssl_cafile"] == "/etc/ssl/ca.pem"


def test_lists_come_comma_separated_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("AE_KAFKA__INPUT_TOPICS", "pumps, valves")
    monkeypatch.setenv("AE_EVENTS__CHANNELS", "pressure,flow rate")
    monkeypatch.setenv("AE_DETECTOR__HIDDEN", "64,16")
    s = load_settings()
    assert s.kafka.input_topics == ("pumps", "valves")
    assert s.events.channels == ("pressure", "flow rate")
    assert s.detector.hidden == (64, 16)


@pytest.mark.parametrize(("env", "named"), [
    ({"AE_KAFKA__SECURITY_PROTOCOL": "TLS"}, "AE_KAFKA__SECURITY_PROTOCOL"),
    ({"AE_KAFKA__MAX_POLL_RECORDS": "0"}, "AE_KAFKA__MAX_POLL_RECORDS"),
    ({"AE_SERVICE__METRICS_PORT": "70000"}, "AE_SERVICE__METRICS_PORT"),
    ({"AE_DETECTOR__HIDDEN": "64,x"}, "AE_DETECTOR__HIDDEN"),
])
def test_invalid_settings_name_the_variable(monkeypatch, env, named) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_dotenv_file_is_read(tmp_path, monkeypatch) -> None:
    (tmp_path / ".env").write_text("AE_KAFKA__GROUP_ID=from-dotenv\nAE_DETECTOR__WARMUP=42\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.kafka.group_id == "from-dotenv" and s.detector.warmup == 42


def test_optional_numbers_can_be_unset_by_word(monkeypatch) -> None:
    monkeypatch.setenv("AE_DETECTOR__ADAPT_AFTER", "none")
    assert load_settings().detector.adapt_after is None
    assert load_settings(detector={"stats_horizon": "off"}).detector.stats_horizon is None
    assert load_settings(detector={"adapt_after": "500"}).detector.adapt_after == 500


def test_the_readme_settings_table_is_the_scripts_output() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = subprocess.run([sys.executable, "scripts/settings_table.py"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert table.count("\n") > 60 and table in (root / "README.md").read_text()
