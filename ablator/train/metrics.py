"""Metric rows of one attempt, written to the store in chunks.

Each chunk is a :class:`~ablator.records.MetricsChunk` created once under
``trials/<i>/metrics/e<epoch>-s<last step>.msgpack`` and never rewritten, so a reader (status,
analysis, a copy of the store) always sees whole chunks. The cost per write is bounded: a chunk
holds at most ``max_rows`` rows, and a chunk is written when it is full, when ``max_seconds``
passed since the last one (so that a watcher sees progress), before every checkpoint (rows up to
step k are in the store before checkpoint k, so a resumed attempt continues at k+1 with no gap),
and at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from ablator import layout, records
from ablator.errors import AblatorError, LeaseLost
from ablator.store.base import Store
from ablator.train.outcome import Fence
from ablator.train.writer import StoreWriter


class MetricWriter:
    """Buffers rows and hands full chunks to the trial's writer thread."""

    def __init__(
        self,
        store: Store,
        trial: int,
        epoch: int,
        writer: StoreWriter,
        fence: Fence,
        *,
        start_step: int = -1,
        max_rows: int = 1000,
        max_seconds: float = 30.0,
        clock_origin: float | None = None,
    ) -> None:
        self.store = store
        self.trial = trial
        self.epoch = epoch
        self.writer = writer
        self.fence = fence
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.origin = time.monotonic() if clock_origin is None else clock_origin
        self.rows: list[records.MetricRow] = []
        self.flushed_step = start_step  # rows must come after what is already (or resumed) in the store
        self.last_step = start_step
        # the attempt's first and last rows, for its warm-up estimate (rows are flushed away)
        self._start = max(start_step, 0)
        self._first: records.MetricRow | None = None
        self._latest: records.MetricRow | None = None
        self._last_flush = time.monotonic()
        self.chunks = 0

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Append a row. Steps never go back to or before an already flushed step: a resumed
        attempt would drop such rows (it continues after the checkpoint's step)."""
        if step <= self.flushed_step:
            raise AblatorError(
                f"trial {self.trial}: metrics for step {step} reported after step {self.flushed_step} was "
                "checkpointed or flushed; report a step's metrics before saving its checkpoint, and in "
                "a resumed attempt continue after the checkpoint's step: `loaded = ctx.load_checkpoint()`; "
                "when it is not None, `state, start = loaded` and report steps start + 1, start + 2, ..."
            )
        vals = {str(k): float(v) for k, v in values.items()}
        row = records.MetricRow(step=step, values=vals, time=time.monotonic() - self.origin)
        self.rows.append(row)
        if self._first is None:
            self._first = row
        self._latest = row
        self.last_step = max(self.last_step, step)

    def warmup_s(self) -> float | None:
        """This attempt's warm-up (:func:`ablator.records.warmup_s`), None before two rows."""
        if self._first is None or self._latest is None:
            return None
        return records.warmup_s(self._first, self._latest, self._start)

    def due(self) -> bool:
        """Whether a chunk should be written now (full, or old enough)."""
        return bool(self.rows) and (
            len(self.rows) >= self.max_rows or time.monotonic() - self._last_flush >= self.max_seconds
        )

    def flush(self) -> None:
        """Queue the buffered rows as one chunk (a no-op when there are none)."""
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        last = max(r.step for r in rows)
        self.flushed_step = last
        self._last_flush = time.monotonic()
        key = layout.metrics(self.trial, self.epoch, last)
        chunk = records.MetricsChunk(trial=self.trial, epoch=self.epoch, rows=rows)
        self.chunks += 1
        self.writer.submit(lambda: self._write(key, chunk))

    def checkpointed(self, step: int) -> None:
        """Checkpoint ``step`` is being written: later rows must come after it (a resumed attempt
        continues at ``step + 1``)."""
        self.flush()
        self.flushed_step = max(self.flushed_step, step)

    def _write(self, key: str, chunk: records.MetricsChunk) -> None:
        self.fence.check()
        # Durable, and written in order on the writer thread: every chunk is on stable storage
        # before the (durable) checkpoint that covers its rows, so a power loss can never keep
        # checkpoint k and lose rows <= k (a resumed attempt continues at k + 1).
        if not self.store.create(key, records.encode(chunk), durable=True):
            raise LeaseLost(
                f"metric chunk {key!r} already exists with other content: another writer holds this epoch"
            )


def finite(values: Mapping[str, float]) -> bool:
    """Whether every value is a finite number."""
    return all(math.isfinite(v) for v in values.values())
