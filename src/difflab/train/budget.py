"""Training to a wall-clock budget (``difflab train --time-budget 10m``).

CPU users think in minutes, not steps. A budgeted run measures its own speed early in the
learning-rate warm-up, then fixes its length once: with ``s`` seconds per optimizer step
(measured over the calibration steps, after the first few that pay one-off costs), ``g``, ``c``
and ``e`` the measured seconds of one sample grid, checkpoint and evaluation, due every ``n_g``,
``n_c`` and ``n_e`` steps, and ``R`` the budget left after the final grid, evaluation and checkpoint,

    N = k + floor(R / (s + g / n_g + c / n_c + e / n_e))

steps in all, where ``k`` steps are done. ``N`` becomes the run's ``steps`` (saved in
``config.json`` and in every checkpoint), so the cosine decay of the learning rate ends at the
budget and a resumed run keeps the same schedule and the budget it has left.

The speed of a shared machine drifts, so at a quarter and at half of the budget the run measures
its speed again, over every step since the fit (sample grids and checkpoints included), and
refits ``N`` when that moves it by more than 3%; the cosine decay then continues over the new
length (a change of a few per cent in the progress of a decay that has barely started). After
half of the budget ``N`` stays; if the machine slows down later, the run stops when the budget is
spent, before step ``N``. Everything but the step counts is deterministic: a budgeted run whose
speed held (no refit) ends with the same weights as the run ``--steps N``, as long as the fit
falls inside the warm-up (the decay has not started).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SKIP_STEPS = 3  # the first steps allocate memory and warm caches: not timed
MIN_TIMED_STEPS = 5
CALIBRATION_S = 30.0  # at most this long, or CALIBRATION_SHARE of the budget if that is less
CALIBRATION_SHARE = 0.05
REFIT_AT = (0.25, 0.5)  # shares of the budget at which the speed is measured again
REFIT_TOLERANCE = 0.03  # refit when the step count would move by more than this


def calibration_done(step: int, timed_s: float, budget_s: float, warmup_steps: int) -> bool:
    """Whether ``step`` steps (``timed_s`` seconds of them after :data:`SKIP_STEPS`) measure the
    speed well enough: at least :data:`MIN_TIMED_STEPS` timed steps, and then the end of the
    warm-up or enough timed seconds, whichever comes first."""
    timed = step - SKIP_STEPS
    if timed < MIN_TIMED_STEPS:
        return False
    return step >= warmup_steps or timed_s >= min(CALIBRATION_S, CALIBRATION_SHARE * budget_s)


@dataclass(frozen=True)
class SideWork:
    """Seconds of one occurrence of a periodic task and its interval in steps (0 = never)."""

    seconds: float
    every: int

    def per_step(self) -> float:
        return self.seconds / self.every if self.every else 0.0


def fit_steps(budget_s: float, elapsed_s: float, step: int, seconds_per_step: float,
              side_work: list[SideWork]) -> int:
    """The fitted step count ``N`` of the module docstring (at least ``step``, the steps done)."""
    left = budget_s - elapsed_s - sum(w.seconds for w in side_work)
    per_step = seconds_per_step + sum(w.per_step() for w in side_work)
    return step + max(0, math.floor(left / per_step))


def refit_steps(budget_s: float, elapsed_s: float, step: int, fit_step: int, fit_elapsed_s: float,
                reserve_s: float) -> int:
    """``N`` from the speed since the fit (``fit_step`` steps done after ``fit_elapsed_s``
    seconds): the steps left in the budget after the final grid and checkpoint (``reserve_s``)."""
    per_step = (elapsed_s - fit_elapsed_s) / max(1, step - fit_step)
    return step + max(0, math.floor((budget_s - elapsed_s - reserve_s) / per_step))


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"10m"``, ``"1.5h"`` or ``"1h30m"``; ``ValueError`` with
    the accepted forms for anything else, or for a duration that is not positive."""
    forms = "a duration such as 600, 90s, 10m, 1.5h or 1h30m"
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    rest, total, seen = text.strip().lower(), 0.0, ""
    if not rest:
        raise ValueError(f"expected {forms}, got {text!r}")
    try:
        if rest[-1].isdigit() or rest[-1] == ".":
            total = float(rest)
            rest = ""
        while rest:
            i = next((j for j, ch in enumerate(rest) if ch in units), -1)
            if i <= 0 or rest[i] in seen or (seen and units[rest[i]] >= units[seen[-1]]):
                raise ValueError
            total += float(rest[:i]) * units[rest[i]]
            seen += rest[i]
            rest = rest[i + 1:]
    except ValueError:
        raise ValueError(f"expected {forms}, got {text!r}") from None
    if not (total > 0 and math.isfinite(total)):
        raise ValueError(f"a time budget must be more than 0 seconds, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"9.5 min"`` or ``"1.3 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
