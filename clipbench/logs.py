"""Route a job's logging, progress bars and errors into its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from typing import IO

from clipbench.errors import InputError


@contextlib.contextmanager
def job_log(path: str) -> Iterator[IO[str]]:
    """Everything the job prints goes to ``path``; a user error ends as one clear line.

    Yields the open log stream (for tqdm progress bars).
    """
    with open(path, "w", buffering=1, encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield stream
        except InputError as exc:
            stream.write(f"ERROR: {exc}\n")
            sys.stderr.write(f"ERROR: {exc}\n")
            raise SystemExit(1) from None
        except BaseException:
            stream.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
