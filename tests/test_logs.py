"""Structured logs: one line per event, whatever the size of what an event carries."""

from __future__ import annotations

import json
import logging

import pytest

from fraudpipe.logs import MAX_VALUE_CHARS, bounded, get_logger, setup


def test_values_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    setup("json")
    huge = "v" * 10_000_000
    try:
        raise ValueError(f"bad value {huge}")
    except ValueError:
        get_logger("t").error("batch.failed", exc_info=True, reason=huge, rows=3, ok=True)
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and len(line) < 30_000
    doc = json.loads(line)
    assert doc["reason"].endswith("... (cut: 10,000,000 characters)")
    assert len(doc["reason"]) < MAX_VALUE_CHARS + 40
    assert doc["rows"] == 3 and doc["ok"] is True
    assert "(cut: " in doc["exc"]
    logging.getLogger("fraudpipe").handlers.clear()


def test_bounded_leaves_short_values_and_numbers_alone() -> None:
    assert bounded("short") == "short" and bounded(12.5) == 12.5 and bounded(None) is None
    assert bounded({"k": "v"}) == {"k": "v"}
    assert bounded("x" * 10, limit=4) == "xxxx... (cut: 10 characters)"
