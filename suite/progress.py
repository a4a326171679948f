"""Rich progress bars for long steps (never ``print``), and device resolution."""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

T = TypeVar("T")

# stderr, so that tables and JSON on stdout stay clean for pipes.
console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("SUITE_PROGRESS", "1") != "0"


class _SharedProgress:
    """A rich Progress that nests: inner stages add their bars to the one already on screen.

    rich allows one live display at a time, and a study runs stages that each want a bar, so
    every ``make_progress()`` shares the outermost one and removes its own tasks on exit.
    """

    _live: Progress | None = None

    def __init__(self, transient: bool = True):
        self._transient = transient
        self._owner = False
        self._tasks: list = []

    def __enter__(self) -> "_SharedProgress":
        if _SharedProgress._live is None:
            _SharedProgress._live = Progress(
                SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=self._transient, disable=not enabled(),
            )
            _SharedProgress._live.start()
            self._owner = True
        return self

    def __exit__(self, *exc) -> None:
        live = _SharedProgress._live
        if live is None:
            return
        if self._owner:
            live.stop()
            _SharedProgress._live = None
        else:
            for t in self._tasks:
                live.remove_task(t)

    def add_task(self, description: str, total: float | None = None, **kw):
        t = _SharedProgress._live.add_task(description, total=total, **kw)
        self._tasks.append(t)
        return t

    def advance(self, task, advance: float = 1) -> None:
        _SharedProgress._live.advance(task, advance)

    def update(self, task, **kw) -> None:
        _SharedProgress._live.update(task, **kw)


def make_progress(transient: bool = True) -> _SharedProgress:
    """``with make_progress() as p: t = p.add_task("name", total=n); p.advance(t)``."""
    return _SharedProgress(transient)


def track(it: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (a no-op when SUITE_PROGRESS=0)."""
    if total is None and hasattr(it, "__len__"):
        total = len(it)  # type: ignore[arg-type]
    with make_progress() as p:
        task = p.add_task(description, total=total)
        for x in it:
            yield x
            p.advance(task)


@contextlib.contextmanager
def status(description: str) -> Iterator[None]:
    """A spinner for a step of unknown length."""
    if not enabled() or _SharedProgress._live is not None:
        yield
        return
    with console.status(description):
        yield


def resolve_device(name: str = "auto"):
    """"auto" -> cuda if available else cpu; anything else is passed to torch.device."""
    import torch

    from suite.errors import SuiteError

    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SuiteError(f"Device {name!r} was requested but no CUDA GPU is available.",
                         "Use --device cpu (or auto).")
    return dev
