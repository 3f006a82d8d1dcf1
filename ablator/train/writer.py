"""One background thread per trial for its store writes (metric chunks, checkpoints, pruning).

Writes leave the training thread so that a slow store (fsync on a busy disk, an S3 round trip)
does not stall training. One thread and a FIFO queue keep the order the protocol needs: metric
rows up to step k are in the store before checkpoint k. The queue is short, so a store that
cannot keep up slows training down instead of piling checkpoints up in memory. After a failed
write nothing later is written (a checkpoint must never land without the rows before it); the
error is raised in the training thread at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]


class StoreWriter:
    """Runs submitted jobs in order on one daemon thread.

    >>> w = StoreWriter()
    >>> w.submit(lambda: None); w.drain(); w.close()
    """

    def __init__(self, *, max_pending: int = 2, name: str = "ablator-writer") -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure, later writes are skipped
                    job()
            except BaseException as exc:
                self._error = exc
            finally:
                self._queue.task_done()

    def check(self) -> None:
        """Raise the exception of a failed write, if any (cheap: no waiting)."""
        if self._error is not None:
            raise self._error

    def submit(self, job: Job) -> None:
        """Queue ``job``; blocks while ``max_pending`` jobs wait. Raises an earlier job's error."""
        self.check()
        if self._closed:
            raise RuntimeError("StoreWriter is closed")
        self._queue.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run; raise the first failure."""
        self._queue.join()
        self.check()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (idempotent). Does not raise: call
        :meth:`drain` first where a failure matters."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
