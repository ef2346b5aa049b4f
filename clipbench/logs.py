"""Route a job's logging, progress bars and errors into its Snakemake log file, and show a long
job's progress on the terminal that runs Snakemake."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from clipbench.cpus import yield_to_model_jobs
from clipbench.errors import InputError

CONSOLE_STEP = 0.1  # a console line at every 10 % of a phase


class Progress:
    """Where a job reports how far it is: a tqdm bar in its log, and on ``console`` (the
    terminal running Snakemake: the job's own stderr, not redirected into the log) one line at
    each ``CONSOLE_STEP`` of a phase with items/s and the time left, named after the job."""

    def __init__(
        self,
        log: IO[str],
        job: str,
        console: IO[str] | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.job, self.console, self.clock = log, job, console, clock

    @contextlib.contextmanager
    def phase(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """Yields ``advance(n)``: ``n`` more of the ``total`` items are done."""
        start, done, shown = self.clock(), 0, 0
        with tqdm(total=total, desc=what, unit="item", file=self.log, mininterval=2.0) as bar:

            def advance(n: int) -> None:
                nonlocal done, shown
                done += n
                bar.update(n)
                step = int(done / max(total, 1) / CONSOLE_STEP + 1e-9)
                if self.console is not None and (step > shown or done == total):
                    shown = step
                    self._line(what, done, total, self.clock() - start)

            yield advance

    def _line(self, what: str, done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else 0.0
        left = (total - done) / rate if rate > 0 else float("nan")
        tail = "done" if done >= total else f"{left:.0f} s left"
        self.console.write(
            f"[{self.job}] {what}: {done / max(total, 1):.0%} ({done}/{total}), "
            f"{rate:.1f}/s, {tail}\n"
        )
        self.console.flush()


def _ignore(n: int) -> None:
    pass


def phase(progress: Progress | None, what: str, total: int):
    """``progress.phase(what, total)``, or a no-op for a run nobody watches (a direct call, a
    strict-float32 sample)."""
    return progress.phase(what, total) if progress else contextlib.nullcontext(_ignore)


def job_name(log_path: str) -> str:
    """logs/pokemon/encode/clip-rn50.log → pokemon/encode/clip-rn50."""
    path = Path(log_path).with_suffix("")
    return path.relative_to("logs").as_posix() if path.parts[:1] == ("logs",) else path.name


@contextlib.contextmanager
def job_log(path: str, model_job: bool = False) -> Iterator[Progress]:
    """Everything the job prints goes to ``path``; a user error ends as one clear line. A job
    that computes no model (``model_job``: one that does) yields the CPUs to those that do
    (:func:`clipbench.cpus.yield_to_model_jobs`).

    Yields the job's :class:`Progress` (its log for bars, the terminal for throttled lines).
    """
    if not model_job:
        yield_to_model_jobs()
    console = sys.stderr  # before the redirect: where Snakemake shows the job's own output
    with open(path, "w", buffering=1, encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield Progress(stream, job_name(path), console)
        except InputError as exc:
            stream.write(f"ERROR: {exc}\n")
            console.write(f"ERROR: {exc}\n")
            raise SystemExit(1) from None
        except BaseException:
            stream.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
