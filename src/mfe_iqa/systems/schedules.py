"""Learning-rate schedules that follow a wall-clock budget instead of a step count.

With ``trainer.max_time`` the number of steps that fit is not known in advance (it depends on the machine
and on what else runs on it), so a cosine over ``trainer.estimated_stepping_batches`` either ends far too
early or never decays. ``budget_cosine_schedule`` decays over elapsed wall-clock time instead: linear warm-up
over the first ``warmup_steps`` optimizer steps, then cosine from lr to ``min_lr_ratio`` x lr reached when
``end_fraction`` of ``budget_min`` minutes have passed since the schedule was built (the start of fit), flat
after. Not reproducible step for step (time-based); a resumed run restarts the clock.
"""

from __future__ import annotations

import math
import time

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def budget_cosine_schedule(
    optimizer: Optimizer,
    budget_min: float,
    warmup_steps: int = 20,
    min_lr_ratio: float = 0.01,
    end_fraction: float = 0.95,
    warmup_fraction: float | None = None,
    clock=time.monotonic,
) -> LambdaLR:
    """Warm-up over ``warmup_steps`` steps, then cosine decay over ``end_fraction * budget_min`` minutes.

    ``warmup_fraction`` exists only so that this can replace ``warmup_cosine_schedule`` in ``system.scheduler``
    (the merged config keeps that key): it must be null, since the number of steps is unknown.
    """
    if warmup_fraction is not None:
        raise ValueError(
            "budget_cosine_schedule: set system.scheduler.warmup_fraction=null and give warmup_steps "
            "(the number of steps in a wall-clock budget is not known in advance)"
        )
    if budget_min is None or float(budget_min) <= 0:
        raise ValueError(f"budget_cosine_schedule needs budget_min > 0 (minutes), got {budget_min!r}")
    if not 0.0 < float(end_fraction) <= 1.0:
        raise ValueError(f"end_fraction must be in (0, 1], got {end_fraction!r}")
    span = float(budget_min) * 60.0 * float(end_fraction)
    warm = max(int(warmup_steps), 0)
    start = clock()

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(max((clock() - start) / span, 0.0), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
