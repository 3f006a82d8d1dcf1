"""Which process on which machine an agent is, so that an observer on the same machine can tell
at once that it died (docs/protocol.md "Prompt takeover").

"The same machine" is the same boot (``/proc/sys/kernel/random/boot_id``) and the same pid
namespace (``/proc/self/ns/pid``), not the same hostname: containers on one host share a hostname
pattern but not pids, and a rebooted host reuses pids. Within one, a pid names one process only
together with its start time (``/proc/<pid>/stat`` field 22, clock ticks since boot): a recycled
pid has another. Where ``/proc`` is missing (not Linux), nothing is known and nothing is judged.

Tests and benchmarks only: ``$ABLATOR_BOOT_ID`` (:data:`BOOT_ID_ENV`) replaces this process's
boot id, so that an agent started with it looks to observers on this machine like one of another
machine (they cannot use its dead pid, and judge it on the store's clock, as elsewhere).
"""

from __future__ import annotations

import functools
import os

#: Tests and benchmarks only: a boot id to report instead of this machine's (see the module docs).
BOOT_ID_ENV = "ABLATOR_BOOT_ID"


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This machine's boot id ("" where unknown; ``$ABLATOR_BOOT_ID`` where set)."""
    forced = os.environ.get(BOOT_ID_ENV)
    if forced:
        return forced
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``; "" where unknown)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None when there is no such
    process (or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def dead_here(boot: str, pidns: str, pid: int, start: int | None) -> bool:
    """True when the process (``pid`` started at ``start``) of boot ``boot`` and pid namespace
    ``pidns`` is known to be gone: same boot and namespace as this process, and no process with
    that pid and start time exists. False when it lives or nothing can be known here."""
    if not boot or not pidns or start is None or boot != boot_id() or pidns != pid_namespace():
        return False
    return process_start(pid) != start
