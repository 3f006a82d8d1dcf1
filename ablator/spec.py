"""The launched experiment (``experiment.json``), read and checked against its own hash.

``experiment.json`` is JSON so that a human can read it, which also makes it easy to edit by
hand. An edited file would be silently wrong: trials run after the edit use the new config under
the old labels, and analysis averages both. So every reader that acts on the experiment (agents,
``launch``, ``run``, ``analyze``, ``report``, ``retry``, ``gc``) goes through :func:`read_spec`,
which recomputes the experiment's hash and refuses a file whose content no longer matches it.
``status`` lists the same problem instead of refusing (it only reports).

::

    spec = read_spec(store)            # None when nothing is launched there
    exp = checked_experiment(spec, f"{store.url}/experiment.json")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablator import layout, records
from ablator.errors import ConfigError, CorruptRecordError, ExperimentOverLimit, ExperimentTampered

if TYPE_CHECKING:
    from ablator.experiment import Experiment
    from ablator.store.base import Store


def checked_experiment(spec: records.ExperimentSpec, source: str) -> Experiment:
    """The stored experiment, schema-checked, after verifying it against ``spec.experiment_hash``.

    Raises :class:`ExperimentTampered` when the content was changed after launch (the message
    says what to do), :class:`ExperimentOverLimit` when an older ablator launched it with more trials than
    ``MAX_TRIALS``, and :class:`~ablator.errors.ConfigError` when it no longer parses.
    """
    from ablator import experiment as X

    verify_hash(spec, source)
    try:
        return X.experiment_from_dict(spec.experiment, source=source)
    except ConfigError as exc:
        if _over_limit(exc):
            raise ExperimentOverLimit(_over_limit_message(spec, source)) from None
        # The hash matches: launch wrote this file, and this ablator refuses it (a rule added since)
        raise ConfigError(
            [
                *exc.problems,
                f"(the experiment was launched by {_launched_by(spec)} and is never rewritten: run its agents and "
                "commands with that version, or launch a corrected experiment into a new store)",
            ],
            source=source,
        ) from None


def _launched_by(spec: records.ExperimentSpec) -> str:
    return f"ablator {spec.ablator_version}" if spec.ablator_version else "an older ablator"


def _over_limit(exc: ConfigError) -> bool:
    """Whether the stored experiment is refused for its number of trials (the design's own
    ``trials``, ``repeats`` or grid), not for anything else."""
    from ablator import experiment as X

    limit = f"at most {X.MAX_TRIALS:,}"
    return bool(exc.problems) and all(limit in p for p in exc.problems)


def launched_over_limit(spec: records.ExperimentSpec) -> bool:
    """Whether ``spec``'s own design asks for more than ``MAX_TRIALS`` trials (an experiment an
    older ablator launched before the limit), as opposed to an edited ``budget``."""
    from ablator import experiment as X

    try:
        X.experiment_from_dict(spec.experiment, source=layout.EXPERIMENT)
    except ConfigError as exc:
        return _over_limit(exc)
    return False


def _over_limit_message(spec: records.ExperimentSpec, source: str) -> str:
    from ablator import experiment as X

    trials = (
        f"{spec.budget:,} trials, more than" if spec.budget is not None else "a design of more trials than"
    )
    return (
        f"{source}: this experiment was launched by {_launched_by(spec)} with {trials} this "
        f"ablator's limit of {X.MAX_TRIALS:,} (MAX_TRIALS; a larger budget is almost surely a typo), so this "
        "ablator neither runs nor extends it. Its records stay readable: `status`, `trials`, `analyze` and "
        "`report` read the trials that exist. To run trials, launch a corrected experiment (at most "
        f"{X.MAX_TRIALS:,} trials) into a new store, or run this store with the ablator version that launched it"
    )


def verify_hash(spec: records.ExperimentSpec, source: str, *, over_limit_ok: bool = False) -> None:
    """Raise :class:`ExperimentTampered` when ``spec.experiment`` no longer matches its hash, or
    its ``budget`` was edited; :class:`ExperimentOverLimit` when an older ablator launched it with more
    than ``MAX_TRIALS`` trials, unless ``over_limit_ok`` (readers that only report)."""
    from ablator import experiment as X

    # hashed as stored (parsing first would turn a default's int into a float and change it)
    actual = X.data_hash(spec.experiment)
    if actual != spec.experiment_hash:
        raise ExperimentTampered(
            f"{source} was changed after launch: its content hashes to {actual[:12]}, but it was launched "
            f"as {spec.experiment_hash[:12]} (the `experiment_hash` field). Trials already run used the "
            "launched experiment, so ablator will not act on the edited one (new trials would carry the "
            "old labels). Restore the file as launched (from a backup, or undo the edit; `python -m "
            "ablator launch EXPERIMENT_FILE --store URL` with the original file shows what differs), or "
            "launch the changed experiment into a new store"
        )
    # ``budget`` is launch's plan, outside the hashed experiment: a hand edit can only be caught
    # by its range, and by the design it must agree with
    if spec.budget is not None and not 1 <= spec.budget <= X.MAX_TRIALS:
        if spec.budget > X.MAX_TRIALS and launched_over_limit(spec):
            if over_limit_ok:
                return
            raise ExperimentOverLimit(_over_limit_message(spec, source))
        raise ExperimentTampered(
            f"{source}: `budget` is {spec.budget}, outside 1..{X.MAX_TRIALS:,} (launch never writes that: the "
            "file was edited); restore it as launched. To change the number of trials of a launched "
            "experiment use `ablator launch EXP --store URL --extend N` (or -N to take back an extension)"
        )


def read_spec(
    store: Store, key: str = layout.EXPERIMENT, *, verify: bool = True, over_limit_ok: bool = False
) -> records.ExperimentSpec | None:
    """The experiment record at ``key`` (``experiment.json`` unless a private ``run`` store's),
    or None when absent. Raises :class:`~ablator.errors.CorruptRecordError` when it does not
    decode and, with ``verify``, :class:`ExperimentTampered` when it was edited after launch.
    ``over_limit_ok``: accept an experiment an older ablator launched with more trials than
    ``MAX_TRIALS`` (readers that only report; see :class:`ExperimentOverLimit`)."""
    data = store.get(key)
    if data is None:
        return None
    source = f"{store.url}/{key}"
    spec = decode_spec(data, source)
    if verify:
        try:
            checked_experiment(spec, source)
        except ExperimentOverLimit:
            if not over_limit_ok:
                raise
            verify_hash(spec, source, over_limit_ok=True)
    return spec


def decode_spec(data: bytes, source: str) -> records.ExperimentSpec:
    """Decode ``experiment.json`` bytes (not verified: see :func:`checked_experiment`). Raises
    :class:`~ablator.errors.CorruptRecordError` naming ``source``, what is wrong, and what to do."""
    try:
        return records.decode_json(data, records.ExperimentSpec, source)
    except CorruptRecordError as exc:
        cause = exc.__cause__
        raise CorruptRecordError(
            f"{source} is not an experiment record ablator can read ({cause if cause is not None else exc}; "
            f"{len(data):,} bytes). launch writes it once and never rewrites it, so it was damaged or edited: "
            "restore it from a backup or a copy of the store, or launch the experiment into a new store"
        ) from None


def stored_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``  $.path: stored -> wanted`` lines for every difference of two experiments' plain data."""
    from ablator.config import MISSING, diff

    def show(v: Any) -> str:
        return "(absent)" if v is MISSING else repr(v)

    return [f"  $.{path}: {show(a)} -> {show(b)}" for path, a, b in diff(stored, wanted)]


__all__ = [
    "checked_experiment",
    "decode_spec",
    "launched_over_limit",
    "read_spec",
    "stored_diff",
    "verify_hash",
]
