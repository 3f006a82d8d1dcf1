"""The error hierarchy. Every error a user can cause is an :class:`AblatorError` whose message
says what went wrong, where (file, config path, store key or URL) and, where it helps, what to do.

The CLI maps ``AblatorError`` to exit status 1; anything else is a bug (exit 3).
"""

from __future__ import annotations

from collections.abc import Sequence


class AblatorError(Exception):
    """Base class of every error ablator raises on purpose."""


class ConfigError(AblatorError):
    """A config, experiment file, search space or override is invalid.

    ``problems`` holds every problem found (all of them are reported at once); ``source`` is the
    file they came from, when there is one.
    """

    def __init__(self, problems: str | Sequence[str], source: str | None = None) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid configuration in {source}" if source else "invalid configuration"
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = f"{head} ({len(self.problems)} problems):\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class EntryPointError(AblatorError):
    """The experiment's entry point (``module:attr``) cannot be imported or is not a trial."""


class StoreError(AblatorError):
    """A store operation failed for good (after retries); the message names the URL and operation."""


class StoreUnavailable(StoreError):
    """The store did not answer, for now: a transient error (EIO, ESTALE or ETIMEDOUT on a soft
    NFS mount, an S3 5xx, throttling or a dropped connection) that outlasted the backend's own
    retries. Trying the same operation later may succeed: it never means a trial failed."""


class UntrustedStoreError(StoreError):
    """The store cannot create-if-absent atomically (or failed the self-test) and was not forced."""


class CorruptRecordError(StoreError):
    """A record in the store could not be decoded; the message names its key."""


class LeaseLost(AblatorError):
    """This holder no longer owns its trial: a later epoch or a result exists, or it fenced itself."""


class TrialFailed(AblatorError):
    """A trial raised; the failure record holds the traceback."""


class CheckpointError(AblatorError):
    """A checkpoint is corrupt, truncated, or belongs to a different config."""


class ExperimentMismatch(AblatorError):
    """A different experiment already lives in this store."""


class ExperimentTampered(StoreError):
    """``experiment.json`` no longer matches the hash it was launched with (edited by hand)."""


class ExperimentOverLimit(ConfigError):
    """An experiment launched (by an older ablator) with more trials than ``MAX_TRIALS``: its
    records stay readable (``status``, ``trials``, ``analyze``, ``report``); nothing runs it."""


class AnalysisError(AblatorError):
    """A store cannot be analysed as asked (no experiment in it, an unknown metric or factor)."""


def extra_hint(extra: str, packages: Sequence[str]) -> str:
    """The one install hint for a missing optional dependency, named by its extra.

    The name ``ablator`` on the package index belongs to another project, so the hint never names the
    index's ``ablator``: it installs the extra from the checkout, or the packages directly.

    >>> extra_hint("serve", ["starlette", "uvicorn"])
    "python -m pip install -e '.[serve]' from the ablator checkout (or python -m pip install starlette uvicorn)"
    """
    direct = " ".join(f"'{p}'" if any(c in p for c in "<>=!~ ") else p for p in packages)
    return (
        f"python -m pip install -e '.[{extra}]' from the ablator checkout (or python -m pip install {direct})"
    )


MAX_MESSAGE_CHARS = 10_000
"""An exception's message kept in a failure record (its head and tail): a message can be huge."""


def exception_text(exc: BaseException) -> str:
    """``"Type: message"`` for any exception, even one whose ``str()`` raises or runs to
    megabytes (the user's code decides both): a failure record must always be writable."""
    name = type(exc).__name__
    try:
        text = str(exc)
    # a broken __str__ is the user's, and may raise anything (SystemExit included): the failure
    # still counts, and the worker must live to record it
    except BaseException as inner:
        text = f"<the exception's str() raised {type(inner).__name__}>"
    if len(text) > MAX_MESSAGE_CHARS:
        half = MAX_MESSAGE_CHARS // 2
        text = f"{text[:half]} [... {len(text) - 2 * half} characters cut ...] {text[-half:]}"
    return f"{name}: {text}" if text else name


__all__ = [
    "AblatorError",
    "AnalysisError",
    "CheckpointError",
    "ConfigError",
    "CorruptRecordError",
    "EntryPointError",
    "ExperimentMismatch",
    "ExperimentOverLimit",
    "ExperimentTampered",
    "LeaseLost",
    "StoreError",
    "StoreUnavailable",
    "TrialFailed",
    "UntrustedStoreError",
    "exception_text",
    "extra_hint",
]
