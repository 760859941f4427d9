"""A stage's timing line: what its start-up and its parts count."""

import os
import subprocess
import time

import pytest
from conftest import timing_terms, tool_env

from beluga import timing


def test_a_stages_start_up_is_counted_from_its_process_start():
    code = "import time; time.sleep(1); import beluga.timing as t; print(t.since_process_start())"
    begin = time.perf_counter()
    done = subprocess.run(["python", "-c", code], env=tool_env(), capture_output=True, text=True,
                          check=True)  # fmt: skip
    wall = time.perf_counter() - begin
    tick = 1 / os.sysconf("SC_CLK_TCK")  # the kernel's start time is whole ticks, rounded down
    assert 1 <= float(done.stdout) <= wall + tick


def test_stages_run_in_one_process_count_only_their_own_parts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(timing, "_SPENT", {})
    monkeypatch.setattr(timing, "_counted_start_up", False)

    @timing.timed("data")
    def load() -> None:
        time.sleep(0.5)

    first = timing.begin()
    load()
    _, one = timing_terms(timing.summary(first))
    second = timing.begin()
    load()
    load()
    _, two = timing_terms(timing.summary(second))
    assert one["start-up"] > 0 and two["start-up"] == 0
    assert 0.5 <= one["data"] < 0.8 and 1.0 <= two["data"] < 1.3  # not 1.5: the first's
    assert list(one) == list(two) == ["start-up", "data", "work"]
