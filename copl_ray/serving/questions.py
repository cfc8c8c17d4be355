"""The next questions for a user onboarding over HTTP (active onboarding).

The candidates are the run's survey pairs whose two responses are graph nodes
(:class:`~copl_ray.graph.onboard.QuestionPool`); the answers so far are the user's
stored annotations (their response ids; a text the run lacks is no node and is ignored,
as adaptation ignores it). Each call ranks the pool for those answers with a selector of
:mod:`copl_ray.graph.onboard` — ``copl`` (expected change of the adapted embedding),
``pref`` (PReF's D-optimal rule) or ``random`` — and returns the best ``k`` not yet
answered. The opening questions (no answer yet) are the same for everyone and are
ranked once, at warm-up. ``random`` draws with a seed of the user id and their number
of answers, so every replica returns the same draw for the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from copl_ray.config import COPL_SELECTOR, PREF_SELECTOR, OnboardingConfig
from copl_ray.graph.onboard import QuestionPool, QuestionSelector, stable_seed
from copl_ray.serving.adapter import UserAdapter, run_config_section
from copl_ray.serving.scorer import require
from copl_ray.serving.store import Annotation


@dataclass(frozen=True)
class Question:
    """One pair to ask: the user answers by labelling ``a`` or ``b`` as chosen."""

    pair_id: int
    prompt: str
    a: str
    b: str


class NoCandidates(LookupError):
    """The run has no survey pair whose two responses are graph nodes: nothing to ask."""


class QuestionService:
    """Question selection over one run's pool, for users served by ``adapter``."""

    def __init__(self, adapter: UserAdapter, cfg: OnboardingConfig | None = None):
        self.adapter = adapter
        self.cfg = cfg if cfg is not None else run_config_section(adapter.run, "onboarding")
        pairs_file = require(adapter.run.data / "pairs.parquet", "pairs table of the data stage")
        columns = ["pair_id", "response_a", "response_b"]
        schema = pq.read_schema(pairs_file)
        columns += ["heldout"] if "heldout" in schema.names else []
        pairs = pq.read_table(pairs_file, columns=columns).to_pandas()
        pool = QuestionPool.from_pairs(adapter.artifacts, pairs)
        self.selector = None
        if len(pool):
            self.selector = QuestionSelector(adapter.artifacts, pool, adapter.cfg, self.cfg)

    def warmup(self) -> None:
        """Rank the opening questions once (the same for every new user)."""
        if self.selector is not None:
            for name in (COPL_SELECTOR, PREF_SELECTOR):
                self.selector.opening(name)

    def ask(
        self, annotations: list[Annotation], k: int, selector: str, user_id: str = ""
    ) -> list[Question]:
        """The next ``k`` questions for a user who gave ``annotations`` (none: opening)."""
        if self.selector is None:
            raise NoCandidates(
                "this run has no survey pair whose two responses are in its graph: "
                "there is nothing to ask"
            )
        chosen = np.array([-1 if a.chosen_id is None else a.chosen_id for a in annotations])
        rejected = np.array([-1 if a.rejected_id is None else a.rejected_id for a in annotations])
        seed = stable_seed(user_id, len(annotations))
        positions = self.selector.select(selector, chosen, rejected, k, seed=seed)
        pool, ids = self.selector.pool, self.adapter.artifacts.response_ids
        texts = self.adapter.responses
        out = []
        for p in positions:
            a, b = int(ids[pool.a[p]]), int(ids[pool.b[p]])
            out.append(
                Question(
                    pair_id=int(pool.pair_ids[p]),
                    prompt=str(texts.at[a, "prompt"]),
                    a=str(texts.at[a, "text"]),
                    b=str(texts.at[b, "text"]),
                )
            )
        return out
