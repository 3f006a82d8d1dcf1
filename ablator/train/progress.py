"""Progress output of a running trial: a bar on a terminal, concise log lines for agents.

The loop calls a :class:`Progress` only at log and evaluation points (never per step), with the
values it has already synced to the host; the display costs nothing between those points.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol, runtime_checkable

from ablator.errors import AblatorError


@runtime_checkable
class Progress(Protocol):
    """What the loop reports to. Implement it to watch a trial (an agent's stall clock does)."""

    def start(self, *, trial: int, epoch: int, total: int | None, initial: int) -> None:
        """Training starts at step ``initial`` of ``total`` (None: unknown)."""

    def update(
        self,
        step: int,
        values: Mapping[str, float],
        *,
        train_epoch: int | None = None,
        important: bool = False,
    ) -> None:
        """Step ``step`` reached; ``values`` are the metrics just logged. ``important``: an
        evaluation or the end (always worth a log line)."""

    def close(self) -> None:
        """Training ended."""


class NoProgress:
    """Shows nothing."""

    def start(self, *, trial: int, epoch: int, total: int | None, initial: int) -> None:
        pass

    def update(
        self,
        step: int,
        values: Mapping[str, float],
        *,
        train_epoch: int | None = None,
        important: bool = False,
    ) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _headline(values: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` names most worth showing: the training loss, evaluation metrics, then the rest."""

    def rank(name: str) -> int:
        if name == "train_loss":
            return 0
        if name.startswith("val_"):
            return 1
        if name.startswith("test_"):
            return 2
        return 4 if name == "lr" else 3

    return sorted(values, key=rank)[:n]  # stable: equal ranks keep their order


def _duration(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LogProgress:
    """One line per evaluation and at most one per ``min_interval`` seconds otherwise:
    ``trial 3 e0 | step 120/360 | epoch 1 | train_loss 0.4123 val_accuracy 0.912 | 85.3 it/s | eta 3s``."""

    def __init__(
        self, file: IO[str] | None = None, *, min_interval: float = 30.0, max_values: int = 6
    ) -> None:
        self.file = file
        self.min_interval = min_interval
        self.max_values = max_values
        self._name = ""
        self._total: int | None = None
        self._t0 = self._last = 0.0
        self._step0 = 0
        self._values: dict[str, float] = {}

    def start(self, *, trial: int, epoch: int, total: int | None, initial: int) -> None:
        self._name = f"trial {trial} e{epoch}"
        self._total = total
        self._t0 = self._last = time.monotonic()
        self._step0 = initial
        self._values = {}
        self._print(f"{self._name} | start at step {initial}" + (f"/{total}" if total else ""))

    def update(
        self,
        step: int,
        values: Mapping[str, float],
        *,
        train_epoch: int | None = None,
        important: bool = False,
    ) -> None:
        self._values.update(values)
        now = time.monotonic()
        if not important and now - self._last < self.min_interval:
            return
        self._last = now
        parts = [self._name, f"step {step}" + (f"/{self._total}" if self._total else "")]
        if train_epoch is not None:
            parts.append(f"epoch {train_epoch}")
        shown = [(k, self._values[k]) for k in _headline(self._values, self.max_values)]
        if shown:
            parts.append(" ".join(f"{k} {_fmt(v)}" for k, v in shown))
        elapsed = now - self._t0
        done = step - self._step0
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} it/s")
            if self._total:
                parts.append(f"eta {_duration(max(0, self._total - step) / rate)}")
        self._print(" | ".join(parts))

    def close(self) -> None:
        pass

    def _print(self, line: str) -> None:
        print(line, file=self.file if self.file is not None else sys.stderr, flush=True)


def _bar_class() -> Any:
    """tqdm without its monitor thread (a trial leaves no threads behind); None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    class _Bar(tqdm):
        monitor_interval = 0

    return _Bar


class BarProgress:
    """A tqdm bar: step/total, epoch, loss and metric, it/s and ETA."""

    def __init__(self, file: IO[str] | None = None, *, max_values: int = 4) -> None:
        self.file = file
        self.max_values = max_values
        self._bar: Any = None
        self._fallback: LogProgress | None = None
        self._values: dict[str, float] = {}

    def start(self, *, trial: int, epoch: int, total: int | None, initial: int) -> None:
        self._values = {}
        bar = _bar_class()
        if bar is None:  # tqdm is not installed: log lines instead
            self._fallback = LogProgress(self.file)
            self._fallback.start(trial=trial, epoch=epoch, total=total, initial=initial)
            return
        self._bar = bar(
            total=total,
            initial=initial,
            desc=f"trial {trial} e{epoch}",
            unit="step",
            dynamic_ncols=True,
            file=self.file if self.file is not None else sys.stderr,
            leave=True,
        )

    def update(
        self,
        step: int,
        values: Mapping[str, float],
        *,
        train_epoch: int | None = None,
        important: bool = False,
    ) -> None:
        bar = self._bar
        if bar is None:
            if self._fallback is not None:
                self._fallback.update(step, values, train_epoch=train_epoch, important=important)
            return
        self._values.update(values)
        post = {} if train_epoch is None else {"epoch": str(train_epoch)}
        post.update((k, _fmt(self._values[k])) for k in _headline(self._values, self.max_values))
        bar.set_postfix(post, refresh=False)
        if step > bar.n:
            bar.update(step - bar.n)
        elif important:
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CallbackProgress:
    """Adapts a plain callable ``fn(step, values)`` (an agent's stall clock, a test)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def start(self, *, trial: int, epoch: int, total: int | None, initial: int) -> None:
        self.fn(initial, {})

    def update(
        self,
        step: int,
        values: Mapping[str, float],
        *,
        train_epoch: int | None = None,
        important: bool = False,
    ) -> None:
        self.fn(step, values)

    def close(self) -> None:
        pass


ProgressLike = bool | str | Progress | Callable[..., Any] | None


def make_progress(progress: ProgressLike, file: IO[str] | None = None) -> Progress:
    """``True``: a bar when stderr is a terminal, log lines otherwise; ``False``/None/"none":
    nothing; "bar"/"log"; a :class:`Progress`; or a callable ``fn(step, values)``."""
    if isinstance(progress, Progress):
        return progress
    if progress is None or progress is False or progress == "none":
        return NoProgress()
    if progress is True:
        stream = file if file is not None else sys.stderr
        return BarProgress(file) if getattr(stream, "isatty", lambda: False)() else LogProgress(file)
    if progress == "bar":
        return BarProgress(file)
    if progress == "log":
        return LogProgress(file)
    if callable(progress):
        return CallbackProgress(progress)
    raise AblatorError(
        f"progress={progress!r}: expected True, False, 'bar', 'log', 'none', a Progress or a callable"
    )
