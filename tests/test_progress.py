"""Training progress: a plain line every `interval` seconds when the output is no terminal."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline.progress import Progress


def test_plain_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture):
    stream = io.StringIO()  # not a TTY: no bar, nothing drawn on the stream
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        progress = Progress(10, enabled=True, interval=0.0, stream=stream)
        progress.set_postfix(loss=0.5, samples_per_s=1234.0)
        for _ in range(10):
            progress.update(1)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert stream.getvalue() == ""
    assert lines[0].startswith("step 1/10 (10%), loss 0.5000, 1,234 samples/s")
    assert lines[-1].startswith("step 10/10 (100%)") and "eta" not in lines[-1]


def test_a_long_interval_prints_only_the_final_count(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        progress = Progress(100, initial=40, interval=3600.0, stream=io.StringIO())
        for _ in range(60):
            progress.update(1)
        progress.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["step 100/100 (100%)"]


def test_disabled_progress_says_nothing(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        progress = Progress(5, enabled=False, interval=0.0, stream=io.StringIO())
        progress.update(5)
        progress.close()
    assert caplog.records == []
