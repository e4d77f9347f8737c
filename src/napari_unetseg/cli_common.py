"""What the ``unetseg`` commands share: the error type, the argument parser, value types, the progress bar.

Kept free of heavy imports, so ``unetseg --help`` and a usage error answer without loading PyTorch.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Bad input noticed by the command line itself (printed as one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``unetseg: error:`` line that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"unetseg: error: {' '.join(message.split())}; see {self.prog} --help\n")


def load_model(spec: str) -> Checkpoint:
    """A checkpoint from a file path or a built-in model name."""
    from .models import resolve_model

    return resolve_model(spec)


def model_file(checkpoint: Checkpoint | None) -> list[Path]:
    """The file a loaded ``--model`` / ``--init`` came from (a built-in model's too): an input of the command."""
    return [Path(checkpoint.path)] if checkpoint is not None and checkpoint.path is not None else []


def positive_int(text: str) -> int:
    """An argument that must be a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argument that must be a finite number > 0."""
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def one_line(exc: BaseException) -> str:
    """An exception as one line for ``unetseg: error: ...`` (a file error names the file)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressBar:
    """``[####    ] 12/32 planes 3.1 planes/s ETA 6s`` on stderr, redrawn in place on a terminal.

    When the stream is not a terminal (a log file, a pipe) only the final state is written, so
    logs are not flooded with carriage returns. Call it as ``progress(done, total)``. With a time
    ``budget`` (seconds) the work may end before ``total``: the bar and the ETA follow whichever
    ends first, the count or the time.
    """

    def __init__(
        self, label: str, stream: TextIO, enabled: bool = True, width: int = 24, unit: str = "planes",
        budget: float | None = None,
    ) -> None:
        self.label = label
        self.unit = unit
        self.budget = budget
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.interactive = enabled and stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.line = ""

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = done / elapsed
        fraction = done / total if total else 1.0
        left = (total - done) / rate if 0 < done < total else None
        clock = ""
        if self.budget is not None and done < total:
            fraction = max(fraction, min(elapsed / self.budget, 1.0))
            time_left = max(self.budget - elapsed, 0.0)
            left = time_left if left is None else min(left, time_left)
            clock = f" {format_seconds(elapsed)} of {format_seconds(self.budget)}"
        filled = int(self.width * min(fraction, 1.0))
        eta = f" ETA {format_seconds(left)}" if left is not None else ""
        line = (
            f"{self.label} [{'#' * filled}{' ' * (self.width - filled)}] {done}/{total} {self.unit}{clock} "
            f"{rate:.1f} {self.unit}/s{eta}"
        )
        if self.interactive and (done == total or time.monotonic() - self.last_draw >= 0.1):
            self.stream.write("\r" + line.ljust(len(self.line)))
            self.stream.flush()
            self.last_draw = time.monotonic()
        self.line = line

    def close(self) -> None:
        """End the bar's line (or write the final state when not on a terminal)."""
        if self.line:
            self.stream.write("\n" if self.interactive else self.line + "\n")
            self.stream.flush()
        self.line = ""



# --------------------------------------------------------------------------- segment
