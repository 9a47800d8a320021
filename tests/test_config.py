"""One configuration model: source order and errors that name the field (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudpipe.config import ConfigError, load_settings
from tests.conftest import fraudpipe


def test_defaults() -> None:
    s = load_settings()
    assert s.queue.lease_s == 30 and s.gather.label_delay_days == 7
    assert s.features.windows_days == [1, 7, 30]


def test_source_order_defaults_yaml_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("queue:\n  lease_s: 11\n  max_attempts: 7\ngather:\n  rate: 500\n")
    s = load_settings(cfg)
    assert (s.queue.lease_s, s.queue.max_attempts, s.gather.rate) == (11, 7, 500)
    monkeypatch.setenv("FRAUDPIPE_QUEUE__LEASE_S", "12")
    monkeypatch.setenv("FRAUDPIPE_GATHER__SIMULATOR__SEED", "9")
    s = load_settings(cfg)
    assert (s.queue.lease_s, s.queue.max_attempts, s.gather.simulator.seed) == (12, 7, 9)
    s = load_settings(cfg, {"queue.lease_s": 13, "gather.rate": None})
    assert (s.queue.lease_s, s.gather.rate) == (13, 500)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("queue:\n  lease_s: abc\n", ["queue.lease_s", "'abc'", "valid number"]),
        ("queue:\n  max_attempts: 0\n", ["queue.max_attempts", "0", "greater than or equal to 1"]),
        ("gather:\n  source: kafka\n", ["gather.source", "'kafka'", "simulator", "replay"]),
        ("queue:\n  leese_s: 3\n", ["queue.leese_s", "unknown field"]),
        ("gather:\n  source: replay\n", ["replay.path is not set"]),
        ("- a list\n", ["must hold a mapping"]),
        (
            "dashboard:\n  allowed_hosts: [ok.example.com, 'http://x.example.com']\n",
            ["dashboard.allowed_hosts.1", "'http://x.example.com'", "without scheme or port"],
        ),
        ("dashboard:\n  allowed_hosts: ['x.example.com:8080']\n", ["allowed_hosts.0", "port"]),
        ("dashboard:\n  allowed_hosts: ['[::zz]']\n", ["allowed_hosts.0", "'[::zz]'"]),
        ("dashboard:\n  allowed_hosts: ['[1::2::3]']\n", ["allowed_hosts.0", "'[1::2::3]'"]),
        ("dashboard:\n  allowed_hosts: ['::1']\n", ["allowed_hosts.0", "[IPv6]"]),
        ("dashboard:\n  latency_warn_s: 0\n", ["dashboard.latency_warn_s", "greater than 0"]),
    ],
)
def test_bad_values_name_field_value_and_expectation(
    tmp_path: Path, yaml_text: str, expected: list[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    for text in expected:
        assert text in str(info.value)


def test_cli_exits_2_naming_the_field(tmp_path: Path) -> None:
    proc = fraudpipe(
        "worker",
        "--stage=gather",
        "--data-dir",
        str(tmp_path),
        "--once",
        env={"FRAUDPIPE_QUEUE__LEASE_S": "-1"},
    )
    assert proc.returncode == 2
    assert "queue.lease_s = '-1'" in proc.stderr and "greater than 0" in proc.stderr
    assert "FRAUDPIPE_QUEUE__LEASE_S" in proc.stderr


def test_allowed_hosts_from_the_environment_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().dashboard.allowed_hosts == ["localhost", "127.0.0.1", "[::1]"]
    monkeypatch.setenv("FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS", "Fraud.Example.com, .corp.io,[::1]")
    assert load_settings().dashboard.allowed_hosts == ["fraud.example.com", ".corp.io", "[::1]"]
    monkeypatch.setenv("FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS", '["*.corp.io", "10.0.0.5"]')
    assert load_settings().dashboard.allowed_hosts == ["*.corp.io", "10.0.0.5"]
    monkeypatch.setenv("FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS", '["a.corp.io"')
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "dashboard.allowed_hosts" in str(info.value) and "not a JSON list" in str(info.value)


def test_cli_exits_2_naming_a_bad_allowed_host_and_its_variable(tmp_path: Path) -> None:
    proc = fraudpipe(
        "worker",
        "--stage=dashboard",
        "--data-dir",
        str(tmp_path),
        env={"FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS": "ok.example.com,https://bad.example.com"},
    )
    assert proc.returncode == 2
    assert "dashboard.allowed_hosts.1 = 'https://bad.example.com'" in proc.stderr
    assert "[env FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS]" in proc.stderr


def test_cli_rejects_unknown_stage_and_missing_config(tmp_path: Path) -> None:
    proc = fraudpipe("worker", "--stage=fetch")
    assert proc.returncode == 2 and "--stage must be one of" in proc.stderr
    proc = fraudpipe("config", "--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    # a stage with no worker: only train may be (train=0, a frozen model; bench e2e runs so)
    proc = fraudpipe("run", "--data-dir", str(tmp_path), "--replicas", "infer=0")
    assert proc.returncode == 2 and "train=0 allowed" in proc.stderr


def test_gpu_without_a_gpu_exits_2_saying_what_is_missing(tmp_path: Path) -> None:
    proc = fraudpipe(
        "worker", "--stage=preprocess", "--device=gpu", "--once", "--data-dir", str(tmp_path)
    )
    assert proc.returncode == 2
    assert "--device=gpu for stage 'preprocess'" in proc.stderr
    # what is missing first: the driver (and how a pod gets it), else the package, else a GPU
    assert "libcuda.so.1" in proc.stderr or "cupy" in proc.stderr
    assert "--device=cpu" in proc.stderr
    run = fraudpipe("run", "--device=gpu", "--no-dashboard", "--data-dir", str(tmp_path))
    assert run.returncode == 2 and "fraudpipe run --device=gpu:" in run.stderr
    assert not (tmp_path / "queue").exists()  # refused before any worker started


def test_a_huge_bad_value_is_named_not_echoed(tmp_path: Path) -> None:
    """A 10 MB value is cut in the error (which goes to terminals and logs), not repeated."""
    huge = "9" * 5 + "x" * 10_000_000
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(f"queue:\n  lease_s: {huge}\n")
    run = fraudpipe("config", "--config", str(cfg))
    assert run.returncode == 2
    assert "queue.lease_s = '99999xxx" in run.stderr and "(10,000,007 characters)" in run.stderr
    assert len(run.stderr) < 2000


def test_the_lookback_needs_its_log() -> None:
    with pytest.raises(ConfigError, match=r"gather.log_retention_days \(30\) must be at least 38"):
        load_settings(None, {"gather.log_retention_days": 30})
    assert load_settings(None, {"gather.log_retention_days": 38}).gather.log_retention_days == 38
