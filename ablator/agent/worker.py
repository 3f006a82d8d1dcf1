"""Worker processes: one long-lived child per slot that runs the agent's trials.

The child (``python -m ablator.agent.worker IN_FD OUT_FD``) imports torch and the user's code
once, then runs one trial after another as the parent asks. A segfault, an OOM kill or a CUDA
error kills only the child; the parent writes the failure and starts a new one.

Parent and child talk over two dedicated pipes (:mod:`ablator.agent.protocol`); the child's
stdout and stderr go through a pipe to a local log file that the parent keeps bounded (the head
and the tail of each trial's output, :class:`TrialLog`) and copies into the store after each trial. The parent holds the lease. The child writes only what ``execute_trial`` writes
(metric chunks and checkpoints under its own epoch) and checks its fence before each write:

* the parent renews a monotonic deadline after every successful heartbeat (same host, so the
  same ``CLOCK_MONOTONIC``); past it the parent is paused, partitioned or dead and the child stops
  writing (self-fencing: ``docs/protocol.md``);
* a later epoch's claim or a result for the trial in the store fences it too
  (:class:`ablator.lease.AttemptFence`);
* the parent kills the child outright when its own ``Held.check()`` reports the lease lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ablator.agent import protocol as P
from ablator.engines.environment import trial_environment
from ablator.errors import LeaseLost, exception_text
from ablator.lease.fence import AttemptFence
from ablator.records import Environment
from ablator.store.retry import unavailable_cause

# --- the child -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (belt and braces with pipe EOF)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def environment(git_commit: str | None) -> Environment:
    """What an attempt records about where it ran: train's environment plus the GPU driver."""

    from ablator.train import collect_environment

    env = collect_environment(git_commit)
    if env.gpu is None:
        return env
    driver = None
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    return msgspec.structs.replace(env, driver=driver)


class _Child:
    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.out_lock = threading.Lock()
        self.runs: queue.Queue[P.Run | P.Quit] = queue.Queue()
        self.fence: AttemptFence | None = None
        self.valid_until = 0.0
        self.pending_stop = False

    def send(self, msg: Any) -> None:
        with self.out_lock:
            P.write_message(self.fd_out, msg)

    def reader(self) -> None:
        """Parent messages; end of file means the parent is gone: exit at once, mid-trial."""
        while True:
            try:
                msg = P.read_to_worker(self.fd_in)
            except (OSError, ValueError):
                msg = None
            if msg is None:
                os._exit(70)
            if isinstance(msg, P.Renew):
                self.valid_until = msg.valid_until
                if self.fence is not None:
                    self.fence.valid_until = msg.valid_until
            elif isinstance(msg, P.StopTrial):
                self.pending_stop = True
                if self.fence is not None:
                    self.fence.request_stop()
            elif isinstance(msg, P.Run | P.Quit):
                self.runs.put(msg)

    def serve(self) -> int:
        first = P.read_to_worker(self.fd_in)
        if not isinstance(first, P.Init):
            return 2
        try:
            ctx = self.setup(first)
        except BaseException as exc:
            kind = type(exc).__name__
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if not _is_ablator_error(exc):
                detail = traceback.format_exc()
            self.send(P.Hello(pid=os.getpid(), error=detail, error_kind=kind))
            return 1
        self.send(P.Hello(pid=os.getpid(), environment=ctx["environment"], device_error=ctx["device_error"]))
        threading.Thread(target=self.reader, name="ablator-worker-reader", daemon=True).start()
        while True:
            msg = self.runs.get()
            if isinstance(msg, P.Quit):
                # Nothing to clean up (each trial closed its writers): skip the interpreter's
                # slow teardown of torch, which would hold up the agent's exit by seconds.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            self.run_trial(ctx, msg)

    def setup(self, init: P.Init) -> dict[str, Any]:
        from ablator.codesnap import activate
        from ablator.store import open_store

        if init.code_dir:
            activate(init.code_dir)
        from ablator.store.retry import RetryingStore

        # The store may be away for a while (a soft NFS mount timing out, S3 throttling): a
        # worker's writes and fence checks retry until its lease deadline, and only then is the
        # attempt fenced -- never failed for a transient error.
        store = RetryingStore(
            open_store(init.store_url, force=init.force),
            keep_trying=lambda: self.fence is not None and time.monotonic() < self.fence.valid_until,
        )
        from ablator import experiment as X

        exp = X.experiment_from_dict(init.experiment, source=f"{init.store_url} experiment.json")
        entry = X.validate(exp)
        # A GPU slot checks its device before saying hello (issue 15: a slot that cannot run
        # CUDA must not fail every trial it claims).
        device_error = None
        if os.environ.get("CUDA_VISIBLE_DEVICES") and exp.resources.gpu != "none":
            from ablator.agent.devices import check_device

            device_error = check_device()
        return {
            "store": store,
            "entry": entry,
            "experiment": exp,
            "environment": environment(init.git_commit),
            "device_error": device_error,
        }

    def run_trial(self, ctx: dict[str, Any], run: P.Run) -> None:
        from ablator.pruners import pruner_of
        from ablator.train import execute_trial

        fence = AttemptFence(
            ctx["store"], run.trial, run.epoch, valid_until=max(run.valid_until, self.valid_until)
        )
        if self.pending_stop:  # a stop that raced with this Run
            fence.request_stop()
        self.fence = fence
        last = [0.0]
        step_box: list[int | None] = [None]

        def progress(step: int, values: Any = None) -> None:
            step_box[0] = step
            now = time.monotonic()
            if now - last[0] >= 0.2:  # the stall clock is coarse; do not flood the pipe
                last[0] = now
                self.send(P.Progress(step=int(step), values=_floats(values)))

        def on_attempt(resumed_from: tuple[int, int] | None) -> None:
            self.send(P.Resumed(resumed_from=resumed_from))

        exp = ctx["experiment"]
        if run.device == "cpu" or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            _share_cpu_threads()
        else:
            _gpu_worker_threads()
        gpu = _PeakMemory(run.device)
        try:
            outcome = execute_trial(
                ctx["entry"],
                run.spec,
                ctx["store"],
                run.trial,
                run.epoch,
                fence=fence,
                device=run.device,
                progress=_trial_progress(progress),
                smoke=run.smoke,
                metric=(exp.metric.name, exp.metric.mode),
                agent_id=run.agent_id,
                environment=ctx["environment"],
                on_attempt=on_attempt,
                pruner=pruner_of(exp.design),
            )
        except LeaseLost as exc:
            reply: Any = P.Fenced(message=str(exc))
        except BaseException as exc:
            unavailable = unavailable_cause(exc)
            if fence.lost is not None:
                reply = P.Fenced(message=fence.lost)
            elif unavailable is not None:
                # Retried until the lease deadline: the attempt is fenced (another holder resumes
                # it after the lease), never failed for a store that did not answer.
                reply = P.Fenced(message=f"the store did not answer before the lease ran out: {unavailable}")
            else:
                from ablator.agent.devices import device_trouble

                reply = P.Errored(
                    kind="exception",
                    message=exception_text(exc),
                    traceback=traceback.format_exc(),
                    step=step_box[0],
                    device=device_trouble(exc) if run.device != "cpu" else "",
                    peak_gpu_mb=gpu.peak_mb(),
                )
                traceback.print_exc()
        else:
            if outcome.status == "stopped":
                reply = P.Stopped(step=outcome.checkpoint_step)
            else:
                reply = P.Finished(outcome=outcome, peak_gpu_mb=gpu.peak_mb())
        finally:
            self.fence = None
            self.pending_stop = False
            sys.stdout.flush()
            sys.stderr.flush()
        # before the agent hears that the trial ended: nothing it started may run on into the
        # next trial of this worker
        end_leftovers()
        self.send(reply)


def _multiprocessing_helpers() -> set[int]:
    """Pids of the helper processes :mod:`multiprocessing` keeps for this process's lifetime
    (its resource tracker and fork server): shared by every trial of the worker, and restarted
    with a warning when killed, so they are not a trial's leftovers."""
    pids: set[int] = set()
    mods = [
        sys.modules.get("multiprocessing.resource_tracker"),
        sys.modules.get("multiprocessing.forkserver"),
    ]
    for mod, holder, attr in (
        (mods[0], "_resource_tracker", "_pid"),
        (mods[1], "_forkserver", "_forkserver_pid"),
    ):
        pid = getattr(getattr(mod, holder, None), attr, None)
        if isinstance(pid, int):
            pids.add(pid)
    return pids


def end_leftovers() -> list[int]:
    """SIGKILL every process a finished trial left running in this worker's process group (a
    helper, a server, a forked copy), and reap those that are its children; returns their pids.

    The worker leads its own group (the agent starts it with ``start_new_session``), so every
    other member was started by a trial, except :func:`_multiprocessing_helpers`. A process that
    left the group (``setsid``, a double-forking daemon) is beyond reach by design. Linux only
    (``/proc``); elsewhere what a trial leaves dies with the worker's group."""
    me = os.getpid()
    if not sys.platform.startswith("linux") or os.getpgrp() != me:
        return []
    keep = {me, *_multiprocessing_helpers()}
    killed: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) in keep:
            continue
        pid = int(name)
        try:
            if os.getpgid(pid) != me:
                continue
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(pid)
    for pid in killed:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)  # our child: no zombie left; anyone else's: ChildProcessError
    if killed:
        print(f"[ablator] ended {len(killed)} process(es) the trial left running: {killed}", file=sys.stderr)
        sys.stderr.flush()
    return killed


def _share_cpu_threads() -> None:
    """Set torch's intra-op threads for a CPU trial: ``ABLATOR_THREADS`` (the agent's
    ``--threads``) or this host's cores split among the CPU slots of all its agents, counted
    afresh before each trial since agents come and go."""
    import torch

    from ablator.agent.devices import cpu_threads_share

    wanted = os.environ.get("ABLATOR_THREADS")
    n = int(wanted) if wanted else cpu_threads_share()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _gpu_worker_threads() -> None:
    """A GPU worker's torch threads: its share of the host's cores (``ABLATOR_THREADS``, set by
    the agent), not all of them in every worker."""
    wanted = os.environ.get("ABLATOR_THREADS")
    if not wanted:
        return
    import torch

    if torch.get_num_threads() != int(wanted):
        torch.set_num_threads(int(wanted))


class _PeakMemory:
    """A CUDA trial's peak GPU memory: torch's peak reservation plus the CUDA context."""

    CONTEXT_MB = 512  # the CUDA context and cuBLAS/cuDNN workspaces, which torch does not count

    def __init__(self, device: str) -> None:
        self.on = device.startswith("cuda")
        if self.on:
            import torch

            with contextlib.suppress(Exception):
                torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> int | None:
        if not self.on:
            return None
        import torch

        try:
            return int(torch.cuda.max_memory_reserved() // 2**20) + self.CONTEXT_MB
        except Exception:
            return None


def _is_ablator_error(exc: BaseException) -> bool:
    from ablator.errors import AblatorError

    return isinstance(exc, AblatorError)


def _not_now(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM reaching the worker: the agent decides when its trial stops."""


def child_main(argv: list[str]) -> int:
    # The parent decides when a trial stops: Ctrl-C in the terminal reaches the whole process
    # group, and a platform's SIGTERM may too (Slurm signals every process of a step); the
    # parent drains its workers itself. A handler, not SIG_IGN: an ignored signal stays ignored
    # across exec, so every process the trial starts would ignore SIGTERM and outlive it; a
    # handler is reset to the default in them.
    signal.signal(signal.SIGINT, _not_now)
    signal.signal(signal.SIGTERM, _not_now)
    _die_with_parent()
    # cuBLAS reads this once, when this process first uses it: deterministic trials need it set
    # before any trial runs, not per trial (torch's reproducibility notes).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    fd_in, fd_out = int(argv[0]), int(argv[1])
    return _Child(fd_in, fd_out).serve()


# --- the parent's handle ---------------------------------------------------------------------

LOG_STEP_S = (
    10.0  # the loop's step lines in a trial's log: at most one per this many seconds (and evaluations)
)
LOG_LIMIT = 1024 * 1024  # bytes of a trial's stdout/stderr kept in the store (head + tail)


class Worker:
    """The parent's side of one worker process."""

    def __init__(self, slot_id: int, init: P.Init, env: dict[str, str], log_dir: Path) -> None:
        self.slot_id = slot_id
        self.log_path = log_dir / f"worker-{slot_id}-{os.getpid()}-{time.monotonic_ns()}.log"
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # A trial is one process on one device, even when a cluster launcher started the agent.
        child_env = trial_environment(os.environ, env)
        child_env["PYTHONUNBUFFERED"] = "1"  # the log shows what the trial printed before a crash
        # The child's output goes through a pipe that this process reads into a bounded file: a
        # trial printing without end must not fill the local disk (a file the child appended to
        # directly would hold everything until the trial ended).
        out_r, out_w = os.pipe()
        try:
            self.log = TrialLog(self.log_path, out_r)
        except BaseException:
            for fd in (out_r, out_w, to_child_r, from_child_w, self.to_child, self.from_child):
                os.close(fd)
            raise
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ablator.agent.worker", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=subprocess.STDOUT,
                env=child_env,
                close_fds=True,
                # its own session and process group: kill() ends every process the trial
                # started with it
                start_new_session=True,
            )
        except BaseException:
            self.log.close()
            raise
        finally:
            os.close(out_w)
        os.close(to_child_r)
        os.close(from_child_w)
        for fd in (self.to_child, self.from_child):
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.reader = P.FrameReader()
        self._wlock = threading.Lock()  # the heartbeat thread sends renewals too
        self.outbox = bytearray()
        self.eof = False
        self.ready = False
        self.hello: P.Hello | None = None
        self.send(init)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.from_child

    def send(self, msg: Any, *, droppable: bool = False) -> None:
        """Queue ``msg`` and write what the pipe takes now (never blocks: a paused child must not
        pause the agent). ``droppable`` messages (renewals) are skipped when the pipe is full."""
        data = P.frame(msg)
        with self._wlock:
            if droppable and len(self.outbox) > 4096:
                return
            self.outbox += data
            self._flush()

    def flush(self) -> None:
        with self._wlock:
            self._flush()

    def _flush(self) -> None:
        while self.outbox and not self.eof:
            try:
                n = os.write(self.to_child, self.outbox)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    self.eof = True
                    return
                raise
            del self.outbox[:n]

    def receive(self) -> list[P.FromWorker]:
        """Messages available now; sets ``eof`` when the child closed its end (it died)."""
        out: list[P.FromWorker] = []
        while not self.eof:
            try:
                data = os.read(self.from_child, 65536)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            try:
                out.extend(self.reader.feed(data))
            except Exception:
                self.eof = True  # a corrupt stream: treat the worker as dead
                break
        self.flush()
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_description(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}"
        return f"exited with status {code}"

    def kill(self) -> None:
        """SIGKILL the worker and every process its trials started (its process group): a
        stalled or fenced trial's helpers must not outlive it."""
        self._kill_group()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def _kill_group(self) -> None:
        # The group is the worker's own (start_new_session); children a trial left behind keep it
        # alive after the worker itself exited. Never our own group (a defensive check).
        if self.proc.pid != os.getpgrp():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def read_log(self, limit: int = LOG_LIMIT, *, truncate: bool = False) -> bytes:
        """The child's output since the last truncation, at most ``limit`` bytes (its head and
        tail); ``truncate`` starts the next trial's log afresh."""
        return self.log.read(limit, reset=truncate)

    def take_log(self, limit: int = LOG_LIMIT) -> bytes:
        """The child's output since the last call, at most ``limit`` bytes (head and tail)."""
        return self.read_log(limit, truncate=True)

    def close(self) -> None:
        self._kill_group()  # whatever the worker's trials left running dies with it
        for fd in (self.to_child, self.from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def cut_marker(left_out: int) -> bytes:
    """The line that stands, in a bounded log, for the ``left_out`` bytes between head and tail."""
    return f"\n[... {left_out} bytes cut ...]\n".encode()


def head_and_tail(data: bytes, limit: int = LOG_LIMIT) -> bytes:
    """``data`` if it fits in ``limit`` bytes, else its first and last ``limit // 2`` bytes with
    a :func:`cut_marker` between them: the one rule for a bounded log."""
    if len(data) <= limit:
        return data
    half = limit // 2
    return data[:half] + cut_marker(len(data) - 2 * half) + data[len(data) - half :]


class TrialLog:
    """A worker's output, read from its pipe by a thread into a local file that never holds more
    than :data:`LOG_LIMIT` bytes: the first ``LOG_LIMIT // 2`` bytes of the trial's output at the
    start of the file, the last ``LOG_LIMIT // 2`` in a ring after them (:func:`head_and_tail`'s
    rule, kept as the output arrives). :meth:`read` first drains what the pipe holds, so a log
    taken after the child reported a trial's end has everything the trial printed before it.
    """

    def __init__(self, path: Path, fd: int, limit: int = LOG_LIMIT) -> None:
        self.path = path
        self._head = limit // 2
        self._ring = limit // 2
        self._total = 0  # bytes of output since the last reset, kept or cut
        self._pipe = fd
        self._lock = threading.Lock()  # pipe reads and file writes happen together under it
        self._file = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.set_blocking(fd, False)
        self._wake_r, self._wake_w = os.pipe()
        self._eof = False
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name=f"log-{path.name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._pipe, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = poller.poll()
            if any(fd == self._wake_r for fd, _ in events):
                return
            with self._lock:
                self._drain()
                if self._eof:  # the child and every process that shared its output ended
                    return

    def _drain(self, chunks: int = 16) -> None:
        """Read what the pipe holds now into the file (under the lock), at most ``chunks`` reads:
        a child that prints without end keeps the pipe full, and the lock must come free for
        :meth:`read` between rounds."""
        for _ in range(chunks):
            if self._eof or self._closed:
                return
            try:
                data = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                self._eof = True
                return
            if not data:
                self._eof = True
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            if self._total < self._head:
                n = min(len(data), self._head - self._total)
                os.pwrite(self._file, data[:n], self._total)
                self._total += n
                data = data[n:]
            if len(data) > self._ring:  # only the last ring's worth of it can be kept
                self._total += len(data) - self._ring
                data = data[-self._ring :]
            while data:
                pos = (self._total - self._head) % self._ring
                n = min(len(data), self._ring - pos)
                os.pwrite(self._file, data[:n], self._head + pos)
                self._total += n
                data = data[n:]
        except OSError:
            # A full or failing local disk loses log lines, never the trial: the bytes still
            # count, so the log says how much it is missing.
            self._total += len(data)

    def read(self, limit: int = LOG_LIMIT, *, reset: bool = False) -> bytes:
        """The output since the last reset, at most ``limit`` bytes (head and tail, with a
        marker saying how many bytes were left out: :func:`head_and_tail`); ``reset`` starts the
        next trial's log afresh."""
        with self._lock:
            # what the child wrote before it reported is in the file or in the pipe, which holds
            # at most its capacity (64 KiB unless raised): a bounded drain takes all of it
            self._drain(64)
            total = self._total
            try:
                if total <= limit and total <= self._head + self._ring:
                    data = self._span(0, total)
                else:
                    h = min(limit // 2, self._head, total)
                    t = min(limit // 2, self._ring, total - h)
                    data = self._span(0, h) + cut_marker(total - h - t) + self._span(total - t, total)
                if reset:
                    self._total = 0
                    os.ftruncate(self._file, 0)
            except OSError:
                return b""
        return data

    def _span(self, start: int, end: int) -> bytes:
        """Output bytes ``start:end`` from the file (those kept: the head, or the ring's tail)."""
        out = b""
        if start < self._head:
            n = min(end, self._head) - start
            out += os.pread(self._file, n, start)
            start += n
        while start < end:  # in the ring, which holds the last ``_ring`` bytes
            pos = (start - self._head) % self._ring
            n = min(end - start, self._ring - pos)
            out += os.pread(self._file, n, self._head + pos)
            start += n
        return out

    def close(self) -> None:
        """Stop reading and close the file (the caller removes it)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join()
        with self._lock:
            self._closed = True
            for fd in (self._pipe, self._file, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def _trial_progress(report: Callable[..., None]) -> Any:
    """A :class:`~ablator.train.progress.LogProgress` whose step lines (start, evaluations, one
    per ``LOG_STEP_S`` otherwise) go to this worker's stderr, which is the trial's log, and that
    also passes every step to ``report`` (the agent's stall clock and progress lines). Built on
    first use: ``ablator.train`` imports torch."""
    from ablator.train.progress import LogProgress

    class TrialProgress(LogProgress):
        def update(
            self,
            step: int,
            values: Mapping[str, float],
            *,
            train_epoch: int | None = None,
            important: bool = False,
        ) -> None:
            report(step, values)
            super().update(step, values, train_epoch=train_epoch, important=important)

    return TrialProgress(None, min_interval=LOG_STEP_S)


def _floats(values: Any) -> dict[str, float]:
    """The numeric entries of a reported metrics mapping (progress lines only; never fails)."""
    out: dict[str, float] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                continue
    return out


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
