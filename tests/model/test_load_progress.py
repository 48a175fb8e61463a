"""The loading progress bar: shown only when loading takes over its delay (a second by
default), then with the layers already done; never when progress is off."""

from __future__ import annotations

import time

import pytest

from ember.model.loader import _progress


def test_no_bar_for_a_fast_load(capsys: pytest.CaptureFixture[str]) -> None:
    with _progress("loading fast.gguf", 4, True) as advance:
        for done in range(1, 5):
            advance(done)
    assert "loading fast.gguf" not in capsys.readouterr().err


def test_bar_appears_after_the_delay_with_the_layers_done(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _progress("loading slow.gguf", 4, True, delay=0.05) as advance:
        advance(1)
        time.sleep(0.1)
        advance(3)
        shown = capsys.readouterr().err
        assert "loading slow.gguf" in shown
        assert "3/4" in shown
        advance(4)
    # leave=False: the finished bar wipes its line.
    assert capsys.readouterr().err.endswith("\r")


def test_no_bar_when_progress_is_off(capsys: pytest.CaptureFixture[str]) -> None:
    with _progress("loading quiet.gguf", 4, False, delay=0.0) as advance:
        time.sleep(0.01)
        advance(2)
    assert capsys.readouterr().err == ""
