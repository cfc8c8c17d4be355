"""The learning-rate schedule of every stage: linear warm-up, then cosine to zero.

One formula for the GNN (:mod:`copl_ray.graph.train`) and the reward model
(:mod:`copl_ray.reward.ds_config`, handed to DeepSpeed as a ``LambdaLR``)::

    f(t) = (t + 1) / w                                   t < w
    f(t) = 0.5 * (1 + cos(pi * min(1, (t - w) / (T - w))))  otherwise

(``T`` total steps, ``w`` warm-up steps; ``lr(t) = lr · f(t)``). Each stage keeps its own
rule for ``w`` from its ``warmup_ratio``. Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine_with_warmup(total_steps: int, n_warmup: int) -> Callable[[int], float]:
    """``LambdaLR`` factor ``f(t)`` (see module docstring)."""

    def factor(step: int) -> float:
        if step < n_warmup:
            return (step + 1) / max(1, n_warmup)
        progress = (step - n_warmup) / max(1, total_steps - n_warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
