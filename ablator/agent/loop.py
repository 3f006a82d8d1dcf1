"""The agent: what ``python -m ablator.agent STORE`` runs on every machine.

One process coordinates; each slot (a GPU, or a CPU share) has a long-lived worker process that
runs the trials (:mod:`ablator.agent.worker`). The coordinating process never trains and never
touches CUDA. Its main thread is an event loop:

1. read worker messages (progress, results, errors) and notice dead workers;
2. supervise: a worker silent for ``stall_seconds`` is killed (failure "stalled"); a worker that
   died mid-trial is a failure "crashed"; every held trial is checked against the store now and
   then, and a trial whose lease is lost has its worker killed at once (nothing more is written);
3. fill free slots through :class:`ablator.lease.Claimer` (released/orphaned trials, then
   retryable failures, then new trials from the design);
4. exit when the experiment is done (unless ``--watch``), on an operator stop, or after a
   SIGTERM/SIGINT drain: running trials checkpoint and stop, releases are written, and another
   agent resumes them at once.

The heartbeat runs in :class:`ablator.lease.Membership`'s thread; after each renewal it passes
the new fence deadline to the workers, which stop writing on their own when the deadline passes
(this process paused, cut off or dead).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import msgspec

from ablator import layout, records
from ablator.agent import devices as D
from ablator.agent import protocol as P
from ablator.agent.devices import Slot, plan_slots
from ablator.agent.options import AgentOptions
from ablator.agent.packing import Packer
from ablator.agent.slots import GpuSlots
from ablator.agent.worker import Worker
from ablator.errors import AblatorError, LeaseLost, StoreError, StoreUnavailable
from ablator.lease import Claimer, Held, LeaseLimits, Membership
from ablator.spec import read_spec
from ablator.store.base import Store
from ablator.store.retry import Outage, wait_for_store
from ablator.tpe import outcome_value

# A worker that dies before saying hello this many times in a row means the environment is
# broken (not one trial): the agent stops instead of restarting workers forever.
MAX_STARTUP_FAILURES = 3
HELLO_TIMEOUT_S = 600.0
LOG_EVERY_S = 10.0  # a running trial's log is copied to the store this often (when it grew)

T = TypeVar("T")


def timing(out: records.Outcome) -> str:
    """A finished attempt's time as the report counts it: training (its duration minus the
    warm-up of :func:`ablator.records.warmup_s`), then the warm-up, when two rows paced it."""
    if out.setup_s is None:
        return f"{out.duration_s:.1f} s"
    return f"{max(0.0, out.duration_s - out.setup_s):.1f} s training, +{out.setup_s:.1f} s warm-up"


@dataclass
class _Deferred:
    """A write for a trial this agent still holds that the store did not take (StoreUnavailable):
    ``write()`` is tried again at ``next_try`` until it succeeds or the lease is lost."""

    what: str
    write: Callable[[], None]
    next_try: float


class AgentError(AblatorError):
    """The agent cannot run this experiment here (broken entry point, no usable device, ...)."""


# --- console ---------------------------------------------------------------------------------


class Console:
    """Plain log lines, or on a terminal a live summary line under them."""

    def __init__(self, stream: IO[str], *, quiet: bool = False, live: bool | None = None) -> None:
        self.stream = stream
        self.quiet = quiet
        self.live = (stream.isatty() if live is None else live) and not quiet
        self._status = ""
        self._lock = threading.Lock()
        self._held: list[str] | None = None
        self.closed = False  # the stream broke (a pipe whose reader exited): the agent runs on

    def _write(self, text: str) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                if self.live and self._status:
                    self.stream.write("\r\x1b[K")
                self.stream.write(text + "\n")
                if self.live and self._status:
                    self.stream.write(self._status)
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                # `agent ... 2>&1 | head`: once head exits, nobody reads; trials must not die of it.
                self.closed = True

    def info(self, msg: str, *, ahead: bool = False) -> None:
        """A log line; ``ahead``: written at once, before lines :meth:`hold` keeps back."""
        if self.quiet:
            return
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        with self._lock:
            if self._held is not None and not ahead:
                self._held.append(line)
                return
        self._write(line)

    def hold(self) -> None:
        """Keep info lines back until :meth:`release` (a trial's "completed" line must come
        before the "started" line of the trial its slot began meanwhile)."""
        with self._lock:
            self._held = []

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
        for line in held:
            self._write(line)

    def warn(self, msg: str) -> None:
        self._write(f"{time.strftime('%H:%M:%S')} warning: {msg}")

    def error(self, msg: str) -> None:
        self._write(f"{time.strftime('%H:%M:%S')} error: {msg}")

    def status(self, line: str) -> None:
        if not self.live:
            return
        with self._lock:
            if self.closed:
                return
            self._status = line
            try:
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.closed = True

    def close(self) -> None:
        if self.live and self._status and not self.closed:
            with self._lock:
                with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                    self.stream.write("\n")
                    self.stream.flush()
                self._status = ""


# --- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Running:
    """A trial this agent holds and one of its workers runs."""

    held: Held
    started: float
    last_progress: float
    next_check: float
    next_log: float = math.inf  # when the log is next copied to the store (set when the trial starts)
    log_mark: tuple[int, bytes] = (0, b"")  # size and tail of the last copy (an unchanged log is not copied)
    step: int | None = None
    resumed_from: tuple[int, int] | None = None
    stopping: bool = False
    values: dict[str, float] = field(default_factory=dict)  # metrics at ``step`` (progress lines)
    first_step: tuple[float, int] | None = None  # (monotonic time, step) of the first progress seen


@dataclass
class SlotState:
    slot: Slot
    worker: Worker | None = None
    run: Running | None = None
    startup_failures: int = 0
    trials_run: int = 0


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    started: int = 0


# --- the agent -------------------------------------------------------------------------------


class Agent:
    """One agent process. ``run()`` returns the exit status."""

    def __init__(self, options: AgentOptions, *, stream: IO[str] | None = None) -> None:
        self.options = options
        self.console = Console(stream or sys.stderr, quiet=options.quiet)
        self.slots: list[SlotState] = []
        self.counts = Counts()
        self.lock = threading.RLock()  # the slot table: the heartbeat thread reads it to renew workers
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.drain_deadline = math.inf
        self.signals = 0
        self.fatal: str | None = None
        # The store did not answer (StoreUnavailable): since when, and the writes that wait for
        # it (results, failures, releases of trials still held), retried with back-off.
        self._outage = Outage(str(options.store), options.store_timeout)
        self._deferred: list[_Deferred] = []
        self.store: Store | None = None
        self._summaries: ThreadPoolExecutor | None = None  # writes trial summaries (see _summarize)
        self.membership: Membership | None = None
        self.claimer: Claimer | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="ablator-agent-"))
        self.t_start = time.monotonic()
        self._next_progress = 0.0  # when the next progress lines are due (not on a terminal)
        self.gpu = GpuSlots([], busy=dict)
        self._hidden: tuple[str | None] | None = None  # the parent's CUDA_VISIBLE_DEVICES before hiding
        self._restart: set[int] = set()  # slots whose worker is replaced once idle (device errors)

    # -- set-up -----------------------------------------------------------------------------

    def _until_answered(self, doing: str, fn: Callable[[], T]) -> T:
        """``fn()`` while starting, tried again with the loop's back-off while the store does not
        answer, until it does, a signal, or ``--store-timeout`` (then StoreUnavailable with the
        loop's message: the CLI reports it and exits 1)."""
        return wait_for_store(
            fn, self._outage, doing=doing, say=self.console.warn, stopped=lambda: self.stop_reason is not None
        )

    def _read_spec(self, store: Store) -> records.ExperimentSpec:
        # verified against its hash: refuses a hand-edited one
        spec = self._until_answered("reading the experiment", lambda: read_spec(store))
        if spec is None:
            raise AgentError(
                f"no experiment in {store.url}: create it first with "
                f"`python -m ablator launch EXPERIMENT_FILE --store {self.options.store}`"
            )
        return spec

    def setup(self) -> None:
        from ablator import experiment as X
        from ablator.store import open_store, self_test

        args = self.options
        # Look before opening for writes: a writable local store is created when absent, and a
        # mistyped path must not leave an empty folder behind.
        try:
            probe = self._until_answered(
                "opening the store", lambda: open_store(args.store, read_only=True, force=args.force)
            )
        except StoreUnavailable:
            raise
        except StoreError as exc:
            if "no such folder" not in str(exc):
                raise
            raise AgentError(
                f"no experiment in {args.store} ({exc}): create it first with "
                f"`python -m ablator launch EXPERIMENT_FILE --store {args.store}`"
            ) from None
        endpoint = getattr(probe, "endpoint", None)  # a remote store: say what is contacted first
        if endpoint is not None:
            self.console.info(f"reading {probe.url} (S3 endpoint {endpoint})")
        self._read_spec(probe)
        with contextlib.suppress(Exception):
            probe.close()
        store = self.store = self._until_answered(
            "opening the store", lambda: open_store(args.store, force=args.force)
        )
        self._outage.url = store.url
        spec = self.spec = self._read_spec(store)
        # two racing creates on a scratch key: refuses a store that lets both win
        self._until_answered("testing the store", lambda: self_test(store))
        for note in store.capabilities().notes:  # SMB/9p/FUSE caveats, a forced store, fault injection
            self.console.warn(f"store {store.url}: {note}")
        exp = self.exp = X.experiment_from_dict(spec.experiment, source=f"{store.url}/{layout.EXPERIMENT}")
        self.limits = LeaseLimits.from_limits(
            exp.limits, lease_seconds=args.lease_seconds, heartbeat_seconds=args.heartbeat_seconds
        )
        self.stall_s = float(exp.limits.stall_seconds)

        # The code every agent runs: the snapshot named by the experiment, checked and unpacked.
        self.code_dir: str | None = None
        if spec.code_sha256:
            from ablator.codesnap import activate, ensure_code

            sha = spec.code_sha256
            self.code_dir = str(self._until_answered("downloading the code", lambda: ensure_code(store, sha)))
            activate(self.code_dir)

        # Devices and slots (GPU bookkeeping: ablator.agent.slots).
        per_gpu, auto = D.parse_slots_per_gpu(args.slots_per_gpu)
        devices, _driver, notes = ([], None, []) if args.cpu else D.discover_devices()
        slots, more = plan_slots(
            cpu=args.cpu,
            gpus_arg=args.gpus,
            slots=args.slots,
            slots_per_gpu=per_gpu,
            found=devices,
        )
        for note in notes + more:
            self.console.warn(note)
        self.slots = [SlotState(s) for s in slots]
        self._hidden = (D.hide_gpus_from_parent(),)  # workers name their own device from here on
        self.gpu = GpuSlots(
            slots, busy=self._busy_specs, packer=Packer(max_per_gpu=per_gpu) if auto else None
        )
        needs_gpu = exp.resources.gpu == "required"
        # Capacity, not free memory now: a busy GPU frees up; the memory rule waits for it.
        if not any(s.can_run(needs_gpu, exp.resources.min_gpu_memory_mb, D.capacity_mb(s)) for s in slots):
            what = (
                "a GPU"
                if not exp.resources.min_gpu_memory_mb
                else f"a GPU with {exp.resources.min_gpu_memory_mb} MiB"
            )
            have = ", ".join(s.label for s in slots)
            raise AgentError(
                f"the experiment's trials need {what} (resources in {layout.EXPERIMENT}) and this agent "
                f"has none ({have}); start it on a machine that has one"
            )

        # Workers import torch and the user's code in parallel with our own validation below.
        self.init_msg = P.Init(
            store_url=args.store,
            force=args.force,
            entry=exp.entry,
            code_dir=self.code_dir,
            experiment=spec.experiment,
            git_commit=spec.code_git_commit,
        )
        for st in self.slots:
            if self.gpu.should_start(st.slot, self._has_worker):
                self._start_worker(st)

        # Fail fast, before claiming anything: the entry point imports and the config validates.
        try:
            self.entry = X.validate(exp)
            self.bound = X.bind(exp, self.entry)  # base config and space, once for all trials
        except AblatorError as exc:
            hint = ""
            if self.gpu.devices and "cuda" in str(exc).lower():
                hint = (
                    "\n(the agent's own process sees no GPU: it imports your module only to validate it. "
                    "Move .cuda()/.to('cuda') at import time into make_model or the trial function)"
                )
            raise AgentError(f"cannot run experiment {exp.name!r} from {store.url}: {exc}{hint}") from exc
        self._wait_for_workers()

        self.tpe = None
        if exp.design.kind == "tpe":
            from ablator.space import load_space
            from ablator.tpe import TpeDesign

            self.tpe = TpeDesign(
                store,
                load_space(exp.design.space, self.entry.config_type),
                metric=exp.metric.name,
                mode=exp.metric.mode,
                seed=exp.design.seed,
            )
        self.suggested: list[int] = []

        self.membership = Membership(
            store,
            self.limits,
            versions=self._versions(),
            gpus=self.gpu.infos(self._has_worker),
            slots=sum(1 for st in self.slots if st.worker is not None),
            cpu_ok=any(s.gpu is None for s in slots),
            on_fenced=self._on_fenced,
            on_renewed=self._on_renewed,
        )
        budget = spec.budget if spec.budget is not None else X.budget(exp, self.entry)
        self.claimer = Claimer(store, self.membership, budget=budget)

    def _versions(self) -> dict[str, str]:
        """What the heartbeat says this agent runs (``status`` warns when agents differ)."""
        import platform

        from ablator import __version__

        out = {"ablator": __version__, "python": platform.python_version()}
        hello = next(
            (st.worker.hello for st in self.slots if st.worker is not None and st.worker.hello), None
        )
        if hello is not None:
            out["torch"] = hello.environment.torch
            if hello.environment.cuda:
                out["cuda"] = hello.environment.cuda
        return out

    def _start_worker(self, st: SlotState) -> None:
        env = st.slot.env()
        if self.options.threads:
            env["ABLATOR_THREADS"] = str(self.options.threads)
        st.worker = Worker(st.slot.id, self.init_msg, env, self.log_dir)

    def _wait_for_workers(self) -> None:
        """The first worker must say hello (torch and the user's code imported, config valid)
        before the first claim: a worker that cannot start is a broken environment, not a broken
        trial. The other slots join the loop as their workers come up."""
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while True:
            pending = [st for st in self.slots if st.worker is not None and not st.worker.ready]
            started = [st for st in self.slots if st.worker is not None]
            if len(pending) < len(started) or self.stop_reason is not None:
                return
            if time.monotonic() > deadline:
                raise AgentError(f"workers did not start within {HELLO_TIMEOUT_S:g} s")
            self._pump(0.1)
            if self.fatal:
                raise AgentError(self.fatal)
            for st in pending:
                w = st.worker
                if w is not None and (w.eof or not w.alive()) and not w.ready:
                    w.wait(1)
                    log = w.take_log().decode("utf-8", "replace").strip()
                    raise AgentError(
                        f"worker for slot {st.slot.label} {w.exit_description()} while starting"
                        + (f":\n{log[-4000:]}" if log else "")
                    )

    # -- callbacks from the heartbeat thread ------------------------------------------------------

    def _on_renewed(self) -> None:
        # Runs in the heartbeat thread: pass the new fence deadline to every running worker now,
        # so that a busy main loop (a slow claim) cannot make healthy workers fence themselves.
        with self.lock:
            for st in self.slots:
                run, w = st.run, st.worker
                if run is not None and w is not None and not w.eof:
                    with contextlib.suppress(OSError):
                        w.send(P.Renew(valid_until=run.held.valid_until()), droppable=True)

    def _on_fenced(self, pairs: list[tuple[int, int]]) -> None:
        # The lease of these trials ran out on our own clock: kill their workers at once, from
        # this thread (os.kill is safe here); the main loop cleans up when it sees them die.
        wanted = set(pairs)
        with self.lock:
            for st in self.slots:
                run, w = st.run, st.worker
                if run is not None and w is not None and (run.held.trial, run.held.epoch) in wanted:
                    w.kill()

    # -- signals ----------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if signum == signal.SIGINT and self.signals >= 2:
            # A second Ctrl-C: exit now. Workers die with us; held trials are taken over after
            # their lease (no releases are written).
            for st in self.slots:
                if st.worker is not None:
                    st.worker.kill()
            os.write(2, b"\nablator agent: second interrupt, exiting without releasing\n")
            os._exit(130)
        name = signal.Signals(signum).name
        if self.stop_reason is None:
            self.stop_reason = f"{name} received"
            if signum == signal.SIGINT and self.exit_code == 0:
                self.exit_code = 130

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                self.setup()
            except StoreUnavailable:
                self._shutdown_workers(kill=True)
                if self.stop_reason is None:
                    raise  # --store-timeout: the message says how long the store was silent
                self.console.info(f"{self.stop_reason} while starting (waiting for the store); exiting")
                return self.exit_code
            except BaseException:
                self._shutdown_workers(kill=True)
                raise
            assert self.membership is not None
            if self.stop_reason is not None:  # a signal while starting: nothing was claimed
                self.console.info(f"{self.stop_reason} while starting; exiting")
                return self.exit_code
            try:
                stopped = self.membership.store.exists(layout.STOP)
            except StoreUnavailable:
                stopped = False  # not known yet: every heartbeat reads it again
            if stopped:
                self.console.info(f"the experiment in {self.store_url} was stopped (ablator stop); exiting")
                self._shutdown_workers(kill=False)
                return 0
            try:
                # The first heartbeat (nothing may be claimed before it is written) and the
                # budget (with extensions) for the first line.
                self._until_answered("writing the first heartbeat", self._lease[0].start)
                self._until_answered("reading the budget", self._lease[1].budget)
            except StoreUnavailable:
                if self.stop_reason is None:
                    raise
            if self.stop_reason is not None:
                self.console.info(f"{self.stop_reason}; exiting before any claim")
                self._shutdown_workers(kill=False)
                return self.exit_code
            self._describe()
            return self._loop()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self._cleanup()

    @property
    def store_url(self) -> str:
        return self.store.url if self.store is not None else str(self.options.store)

    @property
    def _lease(self) -> tuple[Membership, Claimer]:
        """The membership and the claimer (:meth:`setup` made them)."""
        if self.membership is None or self.claimer is None:
            raise AgentError("the agent is not set up (no membership and claimer yet)")
        return self.membership, self.claimer

    def _describe(self) -> None:
        membership, claimer = self._lease
        slots = D.describe_slots([st.slot for st in self.slots], auto=self.gpu.packer is not None)
        kind = self.exp.design.kind
        self.console.info(
            f"agent {membership.agent_id}: experiment {self.exp.name!r} ({kind}, budget "
            f"{claimer.budget(refresh=False)}) in {self.store_url}; slots: {slots}; lease "
            f"{self.limits.lease_seconds:g} s, heartbeat {self.limits.heartbeat_seconds:g} s"
        )

    def _loop(self) -> int:
        membership, claimer = self._lease
        hb = self.limits.heartbeat_seconds
        tick = min(0.1, hb / 4)
        idle_backoff = min(max(hb / 4, 0.05), 1.0)
        next_claim = 0.0
        next_watch = 0.0
        next_done_check = 0.0
        next_status = 0.0
        draining = False
        max_trials = self.options.max_trials
        while True:
            self._pump(tick if not self._free_slots() or time.monotonic() < next_claim else 0.0)
            now = time.monotonic()
            self._supervise(now)
            self._retry_deferred(now)
            if not draining:
                self._tend_gpus()
            if self.fatal and not draining:
                self.console.error(self.fatal)
                self._begin_drain("agent error")
                self.exit_code = 1
                draining = True
            if not draining and self.stop_reason is None and membership.stop_requested:
                self.stop_reason = "stopped by the operator (ablator stop)"
            if not draining and self.stop_reason is not None:
                self._begin_drain(self.stop_reason)
                draining = True
            if draining:
                if not self._busy():
                    break
                if now >= self.drain_deadline:
                    self._abandon_running()
                    break
                continue
            if now >= next_status:
                next_status = now + 0.5
                self._show_status()
            limit_hit = max_trials is not None and self.counts.started >= max_trials
            if not limit_hit and now >= next_claim and self._free_slots():
                try:
                    self._fill()
                except StoreUnavailable as exc:
                    next_claim = self._store_trouble(exc, "claiming")
                else:
                    self._store_answers()
                    if self._free_slots():  # nothing (more) to claim now: do not spin on the store
                        next_claim = now + idle_backoff
            if not self._free_slots() and now >= next_watch:
                # Every slot busy: keep watching the others (cheap), so that an orphan is taken
                # the moment a slot frees, not a lease of watching later.
                next_watch = now + hb
                try:
                    claimer.watch()
                except StoreUnavailable as exc:
                    next_watch = self._store_trouble(exc, "watching the other agents")
            if self._busy():
                continue
            if limit_hit:
                self.console.info(f"started {self.counts.started} trial(s) (--max-trials); exiting")
                break
            if now >= next_done_check:
                next_done_check = now + max(idle_backoff, min(hb, 2.0))
                try:
                    done = claimer.done()
                except StoreUnavailable as exc:
                    next_done_check = self._store_trouble(exc, "checking whether the experiment is done")
                    continue
                self._store_answers()
                if done:
                    if not self.options.watch:
                        self.console.info(f"experiment {self.exp.name!r} is done; exiting")
                        break
                    next_done_check = now + max(hb, 2.0)
        self._show_status()
        return self.exit_code

    def _busy(self) -> bool:
        return any(st.run is not None for st in self.slots) or bool(self._deferred)

    # -- a store that does not answer -------------------------------------------------------------

    def _store_trouble(self, exc: StoreUnavailable, doing: str) -> float:
        """The store did not answer while ``doing``: note it, and return when to try again
        (exponential back-off with jitter). A store silent for ``--store-timeout`` ends the
        agent (its trials are taken over after their lease)."""
        if self._outage.since is None:
            self.console.warn(f"the store did not answer ({doing}): {exc}; retrying with back-off")
        wake = time.monotonic() + self._outage.failed()
        if self._outage.expired() and not self.fatal:
            self.fatal = f"{self._outage.gave_up(exc)}. Trials this agent held are taken over by other agents after their lease"
        return wake

    def _store_answers(self) -> None:
        down = self._outage.answered()
        if down is not None:
            self.console.info(f"the store answers again (after {down:.1f} s)")

    def _defer(self, what: str, write: Callable[[], None], exc: StoreUnavailable) -> None:
        """Keep a write the store did not take, to try again until it succeeds or the lease is lost."""
        self._deferred.append(_Deferred(what, write, self._store_trouble(exc, what)))

    def _retry_deferred(self, now: float) -> None:
        for d in list(self._deferred):
            if now < d.next_try:
                continue
            try:
                d.write()
            except StoreUnavailable as exc:
                d.next_try = self._store_trouble(exc, d.what)
                continue
            except LeaseLost as exc:
                self.counts.lost += 1
                self.console.warn(f"{d.what}: not written, the lease was lost meanwhile ({exc})")
            self._deferred.remove(d)
            self._store_answers()

    def _free_slots(self) -> list[SlotState]:
        return [st for st in self.slots if st.run is None and st.worker is not None and st.worker.ready]

    # -- claiming -----------------------------------------------------------------------------------

    def _new_spec(self, index: int) -> records.TrialSpec:

        self.suggested.append(index)
        if self.tpe is None:
            return self.bound.trial_spec(index)
        point, repeat = self.bound.locate(index)
        overrides, params = self.tpe.choose(index, point)
        spec = self.bound.spec_from_overrides(index, overrides, repeat)
        return msgspec.structs.replace(spec, params=params)

    def _may_claim(self) -> bool:
        limit = self.options.max_trials
        return (
            self.stop_reason is None
            and not self.fatal
            and not self._lease[0].stop_requested
            and (limit is None or self.counts.started < limit)
        )

    def _fill(self, only: list[SlotState] | None = None) -> None:
        """Claim a trial for each free slot (of ``only``), until the claimer has nothing."""
        max_trials = self.options.max_trials
        free = self._free_slots()
        for st in free if only is None else [s for s in only if s in free]:
            slot = st.slot

            def can_run(spec: records.TrialSpec, slot: Slot = slot) -> bool:
                return self.gpu.can_run(slot, spec)  # device, health and the memory rule

            self.suggested.clear()
            held = self._lease[1].claim_next(self._new_spec, can_run, slot=slot.id)
            if self.tpe is not None:
                for index in self.suggested:
                    if held is None or held.trial != index:
                        self.tpe.discard(index)  # lost the race: the winner's point counts
            if held is None:
                break
            self._start_trial(st, held)
            if max_trials is not None and self.counts.started >= max_trials:
                break

    def _device(self, st: SlotState) -> str:
        return self.gpu.device_for(st.slot, self.exp.resources.gpu)

    def _start_trial(self, st: SlotState, held: Held) -> None:
        now = time.monotonic()
        assert st.worker is not None
        run = Running(
            held=held,
            started=now,
            last_progress=now,
            next_check=now + self.limits.heartbeat_seconds,
            next_log=now + LOG_EVERY_S,
        )
        if self.tpe is not None:  # the other agents' samplers see it as pending from now on
            self._journal(self.tpe.claimed, held.trial, held.epoch, held.spec.params)
        with self.lock:
            st.run = run
        st.worker.send(
            P.Run(
                trial=held.trial,
                epoch=held.epoch,
                spec=held.spec,
                valid_until=held.valid_until(),
                agent_id=held.agent_id,
                device=self._device(st),
            )
        )
        self.counts.started += 1
        kind = "new" if held.epoch == 0 else f"attempt {held.epoch + 1}"
        variant = f" {held.spec.variant}" if held.spec.variant else ""
        self.console.info(f"trial {held.trial}{variant} ({kind}) started on {st.slot.label}")

    # -- messages -----------------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        workers = [st.worker for st in self.slots if st.worker is not None and not st.worker.eof]
        fds = [w.fileno() for w in workers]
        if fds:
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
        else:
            if timeout:
                time.sleep(timeout)
            ready = []
        ready_set = set(ready)
        for st in self.slots:
            w = st.worker
            if w is None:
                continue
            w.flush()
            if w.fileno() in ready_set:
                for msg in w.receive():
                    self._handle(st, msg)

    def _handle(self, st: SlotState, msg: P.FromWorker) -> None:
        w = st.worker
        assert w is not None
        if isinstance(msg, P.Hello):
            if msg.error is not None:
                self.fatal = f"the worker for slot {st.slot.label} cannot run this experiment: {msg.error}"
                return
            w.ready = True
            w.hello = msg
            st.startup_failures = 0
            if msg.device_error is not None:
                self._device_error(st, msg.device_error, None)
            return
        run = st.run
        if run is None:
            return  # a late message about a trial we already gave up
        now = time.monotonic()
        held = run.held
        if isinstance(msg, P.Progress):
            run.step = msg.step
            run.last_progress = now
            if msg.values:
                run.values = dict(msg.values)
            if run.first_step is None:
                run.first_step = (now, msg.step)
            self.gpu.on_progress(st.slot, held.trial, msg.step)
        elif isinstance(msg, P.Resumed):
            run.resumed_from = msg.resumed_from
            run.last_progress = now
            if msg.resumed_from is not None:
                e, s = msg.resumed_from
                self.console.info(f"trial {held.trial} resumes from epoch {e} step {s}")
        elif isinstance(msg, P.Finished):
            self._save_log(st)
            self.gpu.on_trial_ok(st.slot)
            self.gpu.on_peak(st.slot, msg.peak_gpu_mb)
            sharing = self._sharing(st)
            out = msg.outcome
            objective = outcome_value(out.status, out.metrics, out.best, self.exp.metric.name)
            if self.tpe is not None:  # learn it before the next suggestion (the claim below)
                self.tpe.finished(held.trial, objective, pruned=out.status == "pruned")
            self._end(st)
            self.console.hold()  # this trial's outcome is printed before the next one's start
            try:
                self._finished(st, held, msg, objective, sharing)
            finally:
                self.console.release()
        elif isinstance(msg, P.Errored):
            self._save_log(st)
            if not (msg.device and self._device_trouble(st, msg)):
                self._fail(st, "exception", msg.message, msg.traceback, msg.step)
            self._end(st)
        elif isinstance(msg, P.Stopped):
            self._save_log(st)
            reason = self.stop_reason or "stopped"
            step = msg.step

            def write_release() -> None:
                held.release(reason, step)
                self.counts.released += 1
                at = f" at step {step}" if step is not None else ""
                self.console.info(f"trial {held.trial} checkpointed{at} and released ({reason})")

            try:
                write_release()
            except StoreUnavailable as exc:
                self._defer(f"trial {held.trial}'s release", write_release, exc)
            except LeaseLost as exc:
                self._lost(st, str(exc), kill=False)
                return
            self._end(st)
        elif isinstance(msg, P.Fenced):
            self._lost(st, msg.message, kill=False)

    # -- GPUs: device errors, packing, the heartbeat's view (logic in ablator.agent.slots) ------------

    def _busy_specs(self) -> dict[int, tuple[records.TrialSpec, int | None]]:
        return {
            st.slot.id: (st.run.held.spec, st.worker.pid if st.worker is not None else None)
            for st in self.slots
            if st.run is not None
        }

    def _has_worker(self, slot: Slot) -> bool:
        return any(st.worker is not None for st in self.slots if st.slot is slot)

    def _sharing(self, st: SlotState) -> int:
        dev = st.slot.device
        return sum(1 for o in self.slots if o.run is not None and dev is not None and o.slot.device == dev)

    def _device_error(self, st: SlotState, message: str, held: Held | None) -> None:
        """A device error on ``st``'s device: its worker is replaced (and its device checked
        again); repeated ones take the device out of service."""
        where = st.slot.label
        out = self.gpu.on_device_error(st.slot, message)
        if out:
            self.console.warn(f"{where} is out of service: {st.slot.out_of_service}")
        else:
            self.console.warn(f"device error on {where}: {message.splitlines()[0] if message else ''}")
        self._restart.add(st.slot.id)

    def _device_trouble(self, st: SlotState, msg: P.Errored) -> bool:
        """A trial error that may be the device's fault: released (True), not failed; False
        when it counts against the trial after all (out of memory on a GPU it had alone)."""
        run = st.run
        assert run is not None
        held = run.held
        if msg.device == "oom":
            running = self._sharing(st)
            if not self.gpu.on_oom(st.slot, msg.peak_gpu_mb):
                return False
            reason = (
                f"CUDA out of memory on {st.slot.label} while {running} trials shared it; "
                "--slots-per-gpu auto backs off"
            )
            self._restart.add(st.slot.id)
        else:
            reason = f"device error on {st.slot.label}: {msg.message.splitlines()[0] if msg.message else ''}"
            self._device_error(st, msg.message, held)
        try:
            held.release(reason, None)
            self.counts.released += 1
            self.console.info(f"trial {held.trial} released ({reason}); the attempt does not count")
        except LeaseLost as exc:
            self._lost(st, str(exc), kill=False)
        return True

    def _record_usage(self, st: SlotState, held: Held, peak_mb: int, sharing: int) -> None:
        """The attempt's GPU use, once (records.Usage): what packing measured."""
        gpu = st.slot.gpu
        rec = records.Usage(
            trial=held.trial,
            epoch=held.epoch,
            gpu=gpu.name if gpu is not None else "",
            peak_gpu_memory_mb=int(peak_mb),
            gpu_memory_total_mb=gpu.memory_total_mb if gpu is not None else None,
            sharing=max(1, sharing),
        )
        try:
            assert self.store is not None
            self.store.create(layout.usage(held.trial, held.epoch), records.encode(rec))
        except AblatorError as exc:
            self.console.warn(f"trial {held.trial}: GPU usage not recorded: {exc}")

    def _tend_gpus(self) -> None:
        """Between claims: replace workers after device errors, start and retire packed slots'
        workers, refresh the heartbeat's GPU view, and stop when no slot can run a trial."""
        if not self.gpu.devices:
            return
        for st in self.slots:
            if st.run is not None:
                continue
            if st.slot.id in self._restart:
                self._restart.discard(st.slot.id)
                if st.worker is not None:
                    self._retire(st)
            if st.worker is not None and self.gpu.should_retire(st.slot):
                self._retire(st)
            elif (
                st.worker is None
                and self.stop_reason is None
                and not self.fatal
                and self.gpu.should_start(st.slot, self._has_worker)
            ):
                self._start_worker(st)
        if self.membership is not None:
            self.membership.gpus = self.gpu.infos(self._has_worker)
            self.membership.slots = max(1, sum(1 for st in self.slots if st.worker is not None))
        needs_gpu = self.exp.resources.gpu == "required"
        if not self.fatal and not self.gpu.can_serve(needs_gpu):
            self.fatal = (
                "every GPU of this agent is out of service and the experiment's trials need one "
                f"(resources.gpu: required): {'; '.join(self.gpu.out_of_service())}"
            )

    def _fail(
        self, st: SlotState, kind: records.FailureKind, message: str, tb: str, step: int | None
    ) -> None:
        run = st.run
        assert run is not None
        held = run.held

        def write_failure() -> None:
            held.fail(kind, message, tb, step)
            self.counts.failed += 1
            first = message.splitlines()[0] if message else ""
            self.console.warn(f"trial {held.trial} attempt {held.epoch + 1} failed ({kind}): {first}")

        try:
            write_failure()
        except StoreUnavailable as exc:
            self._defer(f"trial {held.trial}'s failure record", write_failure, exc)
        except LeaseLost as exc:
            self.console.warn(f"trial {held.trial}: {kind} ({message}), but the lease was lost: {exc}")
            self.counts.lost += 1

    def _finished(self, st: SlotState, held: Held, msg: P.Finished, objective: Any, sharing: Any) -> None:
        """Write a finished trial's result and say so (the console holds other lines back)."""
        if self._may_claim():
            # The slot is free: its worker starts the next trial while we write this one's
            # result (a durable write, the slowest step of a short trial).
            try:
                self._fill([st])
            except StoreUnavailable as exc:
                self._store_trouble(exc, "claiming")
        try:
            self._write_result(st, held, msg, objective, sharing)
        except StoreUnavailable as exc:
            # Still held (the heartbeat lists it): the result is written when the store answers,
            # unless the lease runs out first (then another holder redoes the attempt).
            self._defer(
                f"trial {held.trial}'s result",
                lambda: self._write_result(st, held, msg, objective, sharing),
                exc,
            )
        except LeaseLost as exc:
            self.counts.lost += 1
            self.console.warn(
                f"trial {held.trial} epoch {held.epoch}: finished, but the lease was lost ({exc})"
            )

    def _write_result(self, st: SlotState, held: Held, msg: P.Finished, objective: Any, sharing: Any) -> None:
        """Create a finished trial's result and report it (raises StoreUnavailable, LeaseLost)."""
        out = msg.outcome
        won = held.finish(out)
        if won:
            self.counts.done += 1
            self._summarize(held.trial)
            if self.tpe is not None:
                self._journal(
                    self.tpe.published,
                    held.trial,
                    held.epoch,
                    held.spec.params,
                    objective,
                    pruned=out.status == "pruned",
                )
            metric = self.exp.metric.name
            value = out.best.get(metric, out.metrics.get(metric))
            shown = f" {metric}={value:.4g}" if value is not None else ""
            self.console.info(f"trial {held.trial} {out.status}{shown} ({timing(out)})", ahead=True)
            if msg.peak_gpu_mb:
                self._record_usage(st, held, msg.peak_gpu_mb, sharing)
        else:
            self.console.warn(f"trial {held.trial}: another result was written first; ours is discarded")

    def _save_log(self, st: SlotState, *, final: bool = True) -> None:
        """The worker's stdout/stderr during this trial, bounded, under the trial's epoch;
        ``final`` at the end of the attempt (the next trial's log starts afresh)."""
        run, w = st.run, st.worker
        if run is None or w is None:
            return
        data = w.take_log() if final else w.read_log()
        mark = (len(data), data[-256:])
        if not data or (not final and mark == run.log_mark):
            return
        run.log_mark = mark
        held = run.held
        try:
            held.check(remote=False)  # a fenced holder writes nothing more
            assert self.store is not None
            self.store.replace(layout.log(held.trial, held.epoch), data)
        except LeaseLost:
            pass
        except AblatorError as exc:
            self.console.warn(f"trial {held.trial}: log not saved: {exc}")

    def _journal(self, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
        """Write a tpe journal entry; a store error costs the sampler's view, never the trial."""
        try:
            fn(*args, **kw)
        except AblatorError as exc:
            self.console.warn(f"tpe journal entry not written: {exc}")

    def _end(self, st: SlotState) -> None:
        run = st.run
        if self.tpe is not None and run is not None:  # no longer running here (a finished one is known)
            self._journal(self.tpe.ended, run.held.trial, run.held.epoch)
        with self.lock:
            st.run = None
        st.trials_run += 1
        if self.options.fresh_worker and st.worker is not None and not self.stop_reason:
            self._retire(st)
            self._start_worker(st)

    def _lost(self, st: SlotState, reason: str, *, kill: bool) -> None:
        run = st.run
        if run is None:
            return
        self.counts.lost += 1
        # Whoever saw the loss (a worker's fence, the heartbeat's, a check here), the claim is
        # let go of now: otherwise the heartbeat would keep listing the trial and this agent
        # would never be done.
        run.held.lose(reason)
        self.console.warn(f"trial {run.held.trial} epoch {run.held.epoch}: lease lost ({reason}); stopped it")
        if kill and st.worker is not None:
            st.worker.kill()
        with self.lock:
            st.run = None
        if kill:
            self._replace_worker(st)
        else:
            with contextlib.suppress(Exception):
                st.worker.take_log() if st.worker is not None else None

    def _retire(self, st: SlotState) -> None:
        w = st.worker
        if w is None:
            return
        w.kill()
        w.wait(10)
        w.close()
        st.worker = None

    def _replace_worker(self, st: SlotState) -> None:
        self._retire(st)
        if self.stop_reason is None and not self.fatal:
            self._start_worker(st)

    # -- supervision ----------------------------------------------------------------------------------

    def _supervise(self, now: float) -> None:
        for st in self.slots:
            w = st.worker
            run = st.run
            if w is None:
                continue
            dead = w.eof or not w.alive()
            if dead:
                w.wait(2)
                # Drain whatever it said before dying (its last message may be the result).
                if not w.eof:
                    for msg in w.receive():
                        self._handle(st, msg)
                    run = st.run
                if run is not None:
                    self._crashed(st, w)
                elif not w.ready:
                    st.startup_failures += 1
                    log = w.take_log().decode("utf-8", "replace").strip()
                    if st.startup_failures >= MAX_STARTUP_FAILURES:
                        self.fatal = (
                            f"the worker for slot {st.slot.label} {w.exit_description()} while starting, "
                            f"{st.startup_failures} times in a row" + (f":\n{log[-4000:]}" if log else "")
                        )
                        return
                if self.stop_reason is None and not self.fatal:
                    self._replace_worker(st)
                else:
                    self._retire(st)
                continue
            if run is None:
                continue
            if not run.stopping and now - run.last_progress > self.stall_s:
                self._stalled(st, now)
                continue
            if now >= run.next_log:
                # So that a running trial's output can be watched (`ablator logs --follow`), and an
                # agent killed outright leaves its trial's log up to the last copy.
                run.next_log = now + LOG_EVERY_S
                self._save_log(st, final=False)
            if now >= run.next_check:
                run.next_check = now + self.limits.heartbeat_seconds
                try:
                    run.held.check()
                except LeaseLost as exc:
                    self._lost(st, str(exc), kill=True)
                except AblatorError as exc:  # the store is unreachable: the fence deadline decides
                    self.console.warn(f"trial {run.held.trial}: lease check failed: {exc}")

    def _crashed(self, st: SlotState, w: Worker) -> None:
        run = st.run
        assert run is not None
        held = run.held
        if held.closed is not None:
            # Killed because its lease was lost (on_fenced): nothing more may be written.
            self._lost(st, held.closed, kill=False)
            return
        try:
            held.check(remote=False)
        except LeaseLost as exc:
            self._lost(st, str(exc), kill=False)
            return
        log = w.take_log()
        tail = log[-16000:].decode("utf-8", "replace")
        if log:
            try:
                assert self.store is not None
                self.store.replace(layout.log(held.trial, held.epoch), log)
            except AblatorError as exc:
                self.console.warn(f"trial {held.trial}: log not saved: {exc}")
        message = f"the worker process {w.exit_description()} while running the trial"
        self._fail(st, "crashed", message, tail, run.step)
        with self.lock:
            st.run = None

    def _stalled(self, st: SlotState, now: float) -> None:
        run = st.run
        assert run is not None and st.worker is not None
        st.worker.kill()
        st.worker.wait(5)
        self._save_log(st)
        at = f"after step {run.step}" if run.step is not None else "before its first step"
        message = f"no step reported for {now - run.last_progress:.0f} s (limits.stall_seconds={self.stall_s:g}) {at}; worker killed"
        self._fail(st, "stalled", message, "", run.step)
        with self.lock:
            st.run = None
        self._replace_worker(st)

    # -- draining and exit ----------------------------------------------------------------------------

    def _begin_drain(self, reason: str) -> None:
        grace = float(self.options.grace_seconds)
        # Keep a margin to write the releases of trials that did not stop in time.
        self.drain_deadline = time.monotonic() + max(0.0, grace - min(2.0, grace * 0.2))
        if self.membership is not None:
            with contextlib.suppress(Exception):
                self.membership.drain()
        n = 0
        for st in self.slots:
            if st.run is not None and st.worker is not None:
                st.run.stopping = True
                st.worker.send(P.StopTrial(reason=reason))
                n += 1
        if n:
            self.console.info(
                f"{reason}: checkpointing and releasing {n} running trial(s) (grace {grace:g} s)"
            )
        else:
            self.console.info(f"{reason}: nothing running; exiting")

    def _abandon_running(self) -> None:
        """The grace period is over: kill what still runs and release it without a checkpoint
        step (its newest checkpoint stays on the lineage; the next holder resumes from it)."""
        for st in self.slots:
            run = st.run
            if run is None:
                continue
            if st.worker is not None:
                st.worker.kill()
                st.worker.wait(5)
            self._save_log(st)
            if self.tpe is not None:
                self._journal(self.tpe.ended, run.held.trial, run.held.epoch)
            try:
                run.held.release(f"{self.stop_reason}; did not stop within the grace period", None)
                self.counts.released += 1
                self.console.warn(
                    f"trial {run.held.trial} did not stop in time; released without a new checkpoint"
                )
            except (LeaseLost, AblatorError) as exc:
                self.console.warn(f"trial {run.held.trial}: release not written: {exc}")
            with self.lock:
                st.run = None

    def _shutdown_workers(self, *, kill: bool) -> None:
        for st in self.slots:
            w = st.worker
            if w is None:
                continue
            if not kill and not w.eof and w.ready:
                with contextlib.suppress(OSError):
                    w.send(P.Quit())
            else:
                w.kill()
        for st in self.slots:
            w = st.worker
            if w is None:
                continue
            if w.wait(5) is None:
                w.kill()
                w.wait(5)
            w.close()
            st.worker = None

    def _summarize(self, trial: int) -> None:
        """Write a finished trial's one-file summary for analysis (``layout.trial_summary``) on a
        background thread: it reads the whole trial again, which must not hold up this loop."""
        if self.store is None:
            return
        if self._summaries is None:
            self._summaries = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ablator-summary")
        from ablator.analysis.snapshot import write_trial_summary

        ablation = self.exp.design.kind == "ablation"
        self._summaries.submit(write_trial_summary, self.store, trial, ablation=ablation)

    def _cleanup(self) -> None:
        self._shutdown_workers(kill=bool(self.fatal) or self.exit_code != 0)
        if self._summaries is not None:
            # The one being written finishes (a create is atomic anyway); queued ones are
            # dropped on an abort: readers fall back to the records.
            self._summaries.shutdown(wait=True, cancel_futures=self.exit_code != 0)
        if self.membership is not None:
            with contextlib.suppress(Exception):
                self.membership.close()
        for st in self.slots:
            st.slot.release()
        if self._hidden is not None:
            D.restore_parent_gpus(self._hidden[0])
        self.console.close()
        with contextlib.suppress(OSError):
            for p in self.log_dir.iterdir():
                p.unlink()
            self.log_dir.rmdir()
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()

    # -- display --------------------------------------------------------------------------------------

    def _progress_lines(self) -> None:
        """Not on a terminal (a pipe, a batch job's log): every ``--progress-seconds`` one line
        per running trial, ``trial 3 step 120/? score=0.81 (4.2 steps/s)``, where a terminal
        shows the live status line instead."""
        every = self.options.progress_seconds
        if self.console.live or every <= 0:
            return
        now = time.monotonic()
        if now < self._next_progress:
            return
        first = self._next_progress == 0.0
        self._next_progress = now + every
        if first:
            return  # nothing has run for a period yet
        metric = self.exp.metric.name
        for st in self.slots:
            run = st.run
            if run is None or run.step is None:
                continue
            value = run.values.get(metric)
            shown = f" {metric}={value:.4g}" if value is not None else ""
            rate = ""
            if run.first_step is not None and run.step > run.first_step[1] and now > run.first_step[0]:
                rate = f" ({(run.step - run.first_step[1]) / (now - run.first_step[0]):.3g} steps/s)"
            self.console.info(f"trial {run.held.trial} step {run.step}{shown}{rate}")

    def _show_status(self) -> None:
        self._progress_lines()
        if not self.console.live or self.claimer is None:
            return
        c = self.counts
        busy = sum(1 for st in self.slots if st.run is not None)
        elapsed = max(time.monotonic() - self.t_start, 1e-9)
        rate = c.done / elapsed
        budget = self.claimer.budget(refresh=False)
        final = self.claimer.known_final()
        eta = ""
        if rate > 0 and budget > final:
            left = (budget - final) / rate
            eta = f" | ETA ~{int(left // 60)}m{int(left % 60):02d}s at this agent's pace"
        self.console.status(
            f"experiment {final}/{budget} final | this agent: {c.done} done, {c.failed} failed, "
            f"{busy}/{len(self.slots)} slots busy | {rate * 60:.1f} trials/min{eta}"
        )


def run_agent(options: AgentOptions, *, stream: IO[str] | None = None) -> int:
    """Run an agent with ``options`` (checked when they were built); returns its exit status."""
    return Agent(options, stream=stream).run()
