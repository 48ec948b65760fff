"""A time budget instead of a step count (`afinar train --minutos N`, recipe `train.max_minutes`).

The step time is the plan's (planning/, `afinar plan`): real steps of the recipe measured on this machine at two
token counts, fitted as a + b·tokens, plus the optimizer's step; with the measured held-out evaluation of the base,
`plan_steps` says how many optimizer steps fit in what is left of the budget, held-out evaluations included, and
the scheduler's warmup and decay are built for that many steps. During the loop, a step that would end past the
deadline is not started (`out_of_time`): the run ends at a step boundary with its final checkpoint, held-out loss
and artifacts. Plain arithmetic here, tested without a model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from afinar.planning.estimate import minutes

# Kept back from the budget for the final checkpoint, the adapter, the plot and afinar_run.json (measured on
# SmolLM2-135M: about 1 s; more on a slow disk) and for steps slower than the calibrated ones.
RESERVE_SECONDS = 5.0
SAFETY = 0.97


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float  # the whole `afinar train`, from its start
    remaining_s: float  # what was left when the plan was made
    step_s: float  # one optimizer step, estimated
    eval_s: float  # one held-out evaluation, measured
    steps: int  # optimizer steps that fit
    cap: int  # steps of the recipe's epochs: the budget never trains more than that

    def summary(self, device: str) -> str:
        capped = " (el máximo de la receta: sus épocas)" if self.steps == self.cap else ""
        evals = f", validación {self.eval_s:.0f} s cada vez" if self.eval_s else ""
        return (f"Presupuesto: {minutes(self.budget_s)} → ≈ {self.steps} pasos{capped} en {minutes(self.remaining_s)} "
                f"que quedan, en {device} ({self.step_s:.1f} s por paso{evals}; las épocas de la receta serían "
                f"{self.cap} pasos)")


def plan_steps(remaining_s: float, step_s: float, eval_s: float, eval_every: int, cap: int) -> int:
    """Optimizer steps that fit in `remaining_s`: each costs `step_s`, every `eval_every`-th also an evaluation of
    `eval_s`, and the last one always ends with one (the final held-out loss). At most `cap`; may be 0."""
    usable = remaining_s * SAFETY - RESERVE_SECONDS - eval_s  # the final evaluation
    if usable < step_s:
        return 0
    def fits(n: int) -> bool:
        return n * step_s + (n // eval_every) * eval_s <= usable

    # The division spreads evaluations evenly; then count them exactly, one step up or down at a time.
    steps = math.floor(usable / (step_s + eval_s / eval_every))
    while fits(steps + 1) and steps < cap:
        steps += 1
    while steps > 0 and not fits(steps):
        steps -= 1
    return min(steps, cap)


def out_of_time(now: float, deadline: float, step_s: float, eval_s: float) -> bool:
    """Would one more step, then the final evaluation and the artifacts, end past the deadline?"""
    return now + step_s + eval_s + RESERVE_SECONDS > deadline
