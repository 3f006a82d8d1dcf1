"""Designs as pure functions: any agent computes trial ``n`` alone, with no shared state.

* :func:`grid` ``(space, seed, point)``: full factorial, mixed radix over the point index (the
  last path varies fastest); each point exactly once. ``seed`` is unused: a grid is a grid.
* :func:`random` ``(space, seed, point)``: uniform draws from a numpy ``Generator`` seeded by
  ``SeedSequence([seed, point])``.
* :func:`quasi_random` ``(space, seed, point)``: a scrambled Sobol sequence
  (``torch.quasirandom.SobolEngine``, scrambled with ``seed``), fast-forwarded to ``point``;
  more even coverage than random at the same budget. Imports torch.
* ablation designs are handled in :mod:`ablator.experiment` (a baseline plus named variants).

Random and quasi-random draw one number per *coordinate* (every range and choice of the space,
conditional ones included, numbered in pre-order), so a point's value for one dimension does not
depend on which option a conditional choice took.

:func:`locate` maps a trial index to (point, repeat); :func:`trial_seed` derives the trial's seed
from (design seed, trial index, repeat) with sha256, the same on every machine and Python, and
:func:`repeat_seed` from (design seed, repeat) alone when the design pairs seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ablator.errors import ConfigError
from ablator.space import Choice, Range, Space, UnitPicker

SOBOL_MAX_DIM = 21201  # torch.quasirandom.SobolEngine.MAXDIM


def trial_seed(design_seed: int, index: int, repeat: int) -> int:
    """The seed of trial ``index`` (repeat ``repeat``): a 31-bit int from sha256, so it fits
    every RNG (``torch.manual_seed``, numpy, ``random``) and is the same everywhere."""
    digest = hashlib.sha256(f"ablator-seed-v1:{design_seed}:{index}:{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def repeat_seed(design_seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` when seeds are paired (common random numbers: every variant
    or point of the design runs repeat r with this seed), as :func:`trial_seed`, from sha256."""
    digest = hashlib.sha256(f"ablator-seed-v1:{design_seed}:repeat:{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def locate(kind: str, index: int, *, repeats: int, points: int | None = None) -> tuple[int, int]:
    """Trial ``index`` -> (point, repeat).

    * ``grid`` and ``ablation`` go round by round: trials ``0 .. points-1`` are repeat 0 of every
      point (for an ablation: the baseline, then each variant), then repeat 1, and so on. A
      study cut short has every variant at least once, and a budget extension adds rounds.
    * ``random``, ``quasi_random`` and ``tpe`` keep a point's repeats together: trial ``index``
      is repeat ``index % repeats`` of point ``index // repeats``; an extension adds points.
    """
    if index < 0:
        raise ConfigError(f"trial index must be >= 0, found {index}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, found {repeats}")
    if kind in ("grid", "ablation"):
        if not points or points < 1:
            raise ConfigError(f"a {kind} design needs its number of points (found {points})")
        repeat, point = divmod(index, points)
        return point, repeat
    point, repeat = divmod(index, repeats)
    return point, repeat


def grid(space: Space, seed: int, point: int) -> dict[str, Any]:
    """Grid point ``point`` as flat overrides ``{path: value}``."""
    del seed  # a grid does not depend on the seed (the trial seed does)
    return space.grid_point(point)


def random(space: Space, seed: int, point: int) -> dict[str, Any]:
    """A uniform random point; a pure function of (space, seed, point)."""
    _check(seed, point)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, point])))
    units = rng.random(space.n_coords)
    return space.draw(UnitPicker(_by_coord(units)))


def quasi_random(space: Space, seed: int, point: int) -> dict[str, Any]:
    """Point ``point`` of a scrambled Sobol sequence; a pure function of (space, seed, point)."""
    _check(seed, point)
    if space.n_coords > SOBOL_MAX_DIM:
        raise ConfigError(
            f"quasi_random supports at most {SOBOL_MAX_DIM} dimensions, the space has {space.n_coords}"
        )
    if space.n_coords == 0:
        return space.draw(UnitPicker(_by_coord(np.zeros(0))))
    import torch
    from torch.quasirandom import SobolEngine

    engine = SobolEngine(dimension=space.n_coords, scramble=True, seed=seed)
    if point:
        engine.fast_forward(point)
    units = engine.draw(1, dtype=torch.float64)[0].numpy()
    return space.draw(UnitPicker(_by_coord(units)))


SAMPLERS: dict[str, Callable[[Space, int, int], dict[str, Any]]] = {
    "grid": grid,
    "random": random,
    "quasi_random": quasi_random,
}
"""The stateless designs by name (``tpe`` is adaptive: the agent runs it, see ``ablator.tpe``)."""


def _check(seed: int, point: int) -> None:
    if seed < 0:
        raise ConfigError(f"design.seed must be >= 0, found {seed}")
    if point < 0:
        raise ConfigError(f"point index must be >= 0, found {point}")


def _by_coord(units: Any) -> Callable[[Range | Choice], float]:
    def unit(dim: Range | Choice) -> float:
        return float(units[dim.coord])

    return unit


__all__ = ["SAMPLERS", "grid", "locate", "quasi_random", "random", "repeat_seed", "trial_seed"]
