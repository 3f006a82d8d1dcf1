"""Store keys. This module alone spells them; ``docs/store.md`` lists each key, who writes it and when.

Numbers are zero-padded so that names sort in numeric order: trial ``000042``, epoch ``e0003``,
step ``s00000120``. Padding is a minimum width, not a limit: trial 1,234,567 is ``1234567`` (such
names sort after ``999999`` only by number; every reader parses them with :func:`parse_trial`
or :func:`parse_trial_dir`, never by a fixed width).
"""

from __future__ import annotations

import re

EXPERIMENT = "experiment.json"
#: A private ``ablator run`` store's experiment (not ``EXPERIMENT``: such a store is not launched,
#: agents and ``launch`` must not take it for one); analysis reads it when there is no EXPERIMENT.
PRIVATE_EXPERIMENT = "private.json"
STOP = "control/stop.msgpack"
EXTEND_DIR = "extend/"
AGENTS_DIR = "agents/"
TRIALS_DIR = "trials/"
CODE_DIR = "code/"
CACHE_DIR = "cache/"
FRONTIER_DIR = "frontier/"
SELFTEST_DIR = "selftest/"
RETRY_DIR = "control/retry/"
DESIGN_POINTS_DIR = "design/points/"
DESIGN_LOG_DIR = "design/log/"
PRUNING_DIR = "pruning/"
CURVES_DIR = "pruning/curves/"

_TRIAL_W = 6
_EPOCH_W = 4
_STEP_W = 8


def extension(k: int) -> str:
    return f"{EXTEND_DIR}{k:04d}.msgpack"


def agent(agent_id: str) -> str:
    return f"{AGENTS_DIR}{agent_id}.msgpack"


#: Each agent's release hints, next to the heartbeats: one listing of ``agents/`` shows both.
AGENT_RELEASES_DIR = f"{AGENTS_DIR}released/"


def agent_releases(agent_id: str) -> str:
    """``agents/released/<agent-id>.msgpack``: the trials an agent recently let go of."""
    return f"{AGENT_RELEASES_DIR}{agent_id}.msgpack"


def code(sha256: str) -> str:
    return f"{CODE_DIR}{sha256}.zip"


def cache(name: str) -> str:
    return f"{CACHE_DIR}{name}"


def snapshot(version: int, count: int, digest: str) -> str:
    """A reader-side analysis snapshot (``ablator.analysis``) of ``count`` finished trials, in
    snapshot format ``version``, named by ``digest``: the sha256 of the sorted result keys it
    covers. Created once; any reader may delete the folder (it is only a cache)."""
    return cache(f"analysis-v{version}/{count:08d}-{digest}.msgpack")


def snapshot_dir(version: int) -> str:
    return cache(f"analysis-v{version}/")


def frontier(shard: int) -> str:
    return f"{FRONTIER_DIR}{shard:03d}.msgpack"


def selftest(name: str) -> str:
    return f"{SELFTEST_DIR}{name}"


def design_point(point: int) -> str:
    """An adaptive design's create-once choice for one point (``records.DesignPoint``)."""
    return f"{DESIGN_POINTS_DIR}{point:0{_TRIAL_W}d}.msgpack"


def design_event(seq: int) -> str:
    """An adaptive design's journal entry ``seq`` (``records.DesignEvent``), create-once; entries
    are numbered from 0 without gaps, so a reader follows the journal by reading the next one."""
    return f"{DESIGN_LOG_DIR}{seq:08d}.msgpack"


def rung_dir(rung: int) -> str:
    """The folder of the values that trials recorded at ASHA rung ``rung``."""
    return f"{PRUNING_DIR}rung-{rung:03d}/"


def rung(rung: int, trial: int) -> str:
    """Trial ``trial``'s value and decision at ASHA rung ``rung`` (``records.RungValue``), create-once."""
    return f"{rung_dir(rung)}{trial:0{_TRIAL_W}d}.msgpack"


def curve(trial: int) -> str:
    """A finished trial's learning curve for the median rule (``records.Curve``), create-once."""
    return f"{CURVES_DIR}{trial:0{_TRIAL_W}d}.msgpack"


def retry(k: int) -> str:
    """An operator's ``retry --failed`` command, create-once, numbered."""
    return f"{RETRY_DIR}{k:04d}.msgpack"


def trial_dir(index: int) -> str:
    return f"{TRIALS_DIR}{index:0{_TRIAL_W}d}/"


def claim(index: int, epoch: int) -> str:
    return f"{trial_dir(index)}claim.e{epoch:0{_EPOCH_W}d}.msgpack"


def attempt(index: int, epoch: int) -> str:
    return f"{trial_dir(index)}attempt.e{epoch:0{_EPOCH_W}d}.msgpack"


def release(index: int, epoch: int) -> str:
    return f"{trial_dir(index)}release.e{epoch:0{_EPOCH_W}d}.msgpack"


def failed(index: int, epoch: int) -> str:
    return f"{trial_dir(index)}failed.e{epoch:0{_EPOCH_W}d}.msgpack"


def usage(index: int, epoch: int) -> str:
    """What attempt ``epoch`` used of its GPU (``records.Usage``; packing measures with it)."""
    return f"{trial_dir(index)}usage.e{epoch:0{_EPOCH_W}d}.msgpack"


def result(index: int) -> str:
    return f"{trial_dir(index)}result.msgpack"


def trial_summary(index: int) -> str:
    """A finished trial's compacted summary for analysis (``ablator.analysis.snapshot``): its
    table row and its canonical history in one file, written once by the result's holder."""
    return f"{trial_dir(index)}summary.msgpack"


def metrics_dir(index: int) -> str:
    return f"{trial_dir(index)}metrics/"


def metrics(index: int, epoch: int, step: int) -> str:
    return f"{metrics_dir(index)}e{epoch:0{_EPOCH_W}d}-s{step:0{_STEP_W}d}.msgpack"


def ckpt_dir(index: int) -> str:
    return f"{trial_dir(index)}ckpt/"


def checkpoint(index: int, epoch: int, step: int) -> str:
    return f"{ckpt_dir(index)}e{epoch:0{_EPOCH_W}d}-s{step:0{_STEP_W}d}.pt"


def log(index: int, epoch: int) -> str:
    return f"{trial_dir(index)}logs/e{epoch:0{_EPOCH_W}d}.txt"


# --- parsing: the inverse of the builders above, for readers that list a folder -------------

# A trial folder's name: six digits, or more without a leading zero (what ``trial_dir`` builds
# for indexes >= 1,000,000). Nothing else is a trial: ``0000001`` must not alias trial 1.
_TRIAL_NAME = rf"(?:\d{{{_TRIAL_W}}}|[1-9]\d{{{_TRIAL_W},}})"
_TRIAL_RE = re.compile(rf"^{TRIALS_DIR}({_TRIAL_NAME})/")
_TRIAL_DIR_RE = re.compile(rf"^{_TRIAL_NAME}$")
_RECORD_RE = re.compile(r"^(claim|attempt|release|failed)\.e(\d+)\.msgpack$")
_EPOCH_STEP_RE = re.compile(r"^e(\d+)-s(\d+)\.(msgpack|pt)$")
_LOG_RE = re.compile(r"^logs/e(\d+)\.txt$")


def parse_trial(key: str) -> int | None:
    """The trial index of a key under ``trials/``, or None."""
    m = _TRIAL_RE.match(key)
    return int(m.group(1)) if m else None


def parse_trial_dir(name: str) -> int | None:
    """A folder name listed under ``trials/`` (``000042``, ``1234567``) -> its index, or None."""
    return int(name) if _TRIAL_DIR_RE.match(name) else None


def trial_indexes(names: list[str]) -> set[int]:
    """The trial indexes among folder names listed under ``trials/`` (``list_dirs``)."""
    return {i for n in names if (i := parse_trial_dir(n)) is not None}


def parse_record(name: str) -> tuple[str, int] | None:
    """``claim.e0003.msgpack`` -> ("claim", 3); other names -> None. ``name`` is the base name."""
    m = _RECORD_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def parse_epoch_step(name: str) -> tuple[int, int] | None:
    """``e0001-s00000120.pt`` (or ``.msgpack``) -> (1, 120); other names -> None."""
    m = _EPOCH_STEP_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_log(index: int, key: str) -> int | None:
    """``trials/<index>/logs/e0002.txt`` -> 2 (the epoch whose log it is); other keys -> None."""
    prefix = trial_dir(index)
    if not key.startswith(prefix):
        return None
    m = _LOG_RE.match(key[len(prefix) :])
    return int(m.group(1)) if m else None


_SNAPSHOT_RE = re.compile(r"^(\d{8})-([0-9a-f]{64})\.msgpack$")


def parse_snapshot(name: str) -> tuple[int, str] | None:
    """``00000120-<sha256>.msgpack`` -> (120, "<sha256>"); other names -> None."""
    m = _SNAPSHOT_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


_EXTENSION_RE = re.compile(rf"^{EXTEND_DIR}(\d+)\.msgpack$")


def parse_extension(key: str) -> int | None:
    """``extend/0003.msgpack`` -> 3; other keys -> None."""
    m = _EXTENSION_RE.match(key)
    return int(m.group(1)) if m else None


def parse_agent(key: str) -> str | None:
    """``agents/<agent-id>.msgpack`` -> the agent id; other keys -> None."""
    if key.startswith(AGENTS_DIR) and key.endswith(".msgpack") and "/" not in key[len(AGENTS_DIR) :]:
        return key[len(AGENTS_DIR) : -len(".msgpack")] or None
    return None


def parse_agent_releases(key: str) -> str | None:
    """``agents/released/<agent-id>.msgpack`` -> the agent id; other keys -> None."""
    rest = key[len(AGENT_RELEASES_DIR) :]
    if key.startswith(AGENT_RELEASES_DIR) and key.endswith(".msgpack") and "/" not in rest:
        return rest[: -len(".msgpack")] or None
    return None


def basename(key: str) -> str:
    return key.rstrip("/").rsplit("/", 1)[-1]
