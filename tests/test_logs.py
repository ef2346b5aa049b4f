"""A job's log and its progress on the terminal that runs Snakemake."""

import io
import sys

import pytest

from clipbench.errors import InputError
from clipbench.logs import Progress, job_log, job_name


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_console_lines_every_tenth_with_rate_and_time_left():
    log, console, clock = io.StringIO(), io.StringIO(), Clock()
    progress = Progress(log, "pokemon/encode/clip-rn50", console, clock)
    with progress.phase("images", 833) as advance:
        for _ in range(833 // 16):  # batches of 16, 0.1 s each: 160 items/s
            clock.now += 0.1
            advance(16)
        clock.now += 0.1
        advance(833 % 16)
    lines = console.getvalue().splitlines()
    # One line at the first batch past each tenth (never two for one step), the last at 100 %.
    done = [int(line.split("(")[1].split("/")[0]) for line in lines]
    assert [d * 10 // 833 for d in done] == list(range(1, 11))
    assert lines[0] == "[pokemon/encode/clip-rn50] images: 12% (96/833), 160.0/s, 5 s left"
    assert (
        lines[-1] == "[pokemon/encode/clip-rn50] images: 100% (833/833), 157.2/s, done"
    )  # 833 in 5.3 s
    assert "833/833" in log.getvalue()  # the full bar is in the log


def test_a_small_phase_still_says_when_it_is_done():
    console = io.StringIO()
    with Progress(io.StringIO(), "job", console, Clock()).phase("texts", 3) as advance:
        advance(3)
    assert console.getvalue() == "[job] texts: 100% (3/3), 0.0/s, done\n"


def test_job_names_come_from_the_log_path():
    assert job_name("logs/pokemon/encode/clip-rn50.log") == "pokemon/encode/clip-rn50"
    assert job_name("logs/summary.log") == "summary"
    assert job_name("/elsewhere/x.log") == "x"


def test_job_log_keeps_the_console_for_progress_and_errors(tmp_path, capsys):
    path = tmp_path / "job.log"
    with pytest.raises(SystemExit), job_log(str(path)) as progress:
        print("to the log")
        with progress.phase("images", 2) as advance:
            advance(2)
        raise InputError("the user's to fix")
    out = capsys.readouterr()
    assert "to the log" in path.read_text() and "to the log" not in out.out + out.err
    assert "images: 100% (2/2)" in out.err
    assert out.err.endswith("ERROR: the user's to fix\n")
    assert sys.stderr is not None
