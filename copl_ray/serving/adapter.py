"""Adapt a user who arrives over HTTP with a few labelled pairs — no gradient step.

Labels arrive as texts ``{prompt, chosen, rejected}``. Each text is mapped to a
response id of the run by an exact ``(prompt, text)`` match against
``data/responses.parquet``; a text that matches nothing gets a fresh negative id, so it
reaches no neighbour in the graph — the adaptation contract accepts unknown ids and
counts the *labels* with one (``n_unknown``, exactly as offline adaptation counts them:
a label whose two texts are both unknown counts once). The embedding is then
(docs/method.md §4)::

    e_u* = Σ_{u ∈ N^+_u*(k)} w_{u,u*} e_u,   w = softmax_u(γ_{u,u*} / κ),
    γ_{u,u*} = Σ_{(a≻b) ∈ D_u*} log σ(s_ua − s_ub)

computed by :func:`copl_ray.graph.adapt.adapt_one_user` (variant ``weighted``; or
``naive``), the per-user path of offline adaptation. ``user_opt`` runs gradient steps and
is refused here. The answer is the user's :class:`~copl_ray.graph.users.UserEmbedding`
record (``kind="created"``), the record every stage passes along.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from copl_ray.artifacts import RunDir
from copl_ray.config import AdaptConfig, ConfigError, config_from_dict
from copl_ray.graph.users import CREATED, UserEmbedding
from copl_ray.serving.scorer import require, response_index
from copl_ray.serving.store import Annotation

OPTIMIZATION_FREE_VARIANTS = ("weighted", "naive")


def run_config_section(run: RunDir, section: str) -> Any:
    """The ``section`` the pipeline saved in ``run_dir/config.yaml`` (defaults if none).

    Only this section is read, so a run saved by an older or newer config tree still serves.
    """
    path = run.root / "config.yaml"
    saved = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    try:
        return getattr(config_from_dict({section: saved.get(section) or {}}), section)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def run_adapt_config(run: RunDir) -> AdaptConfig:
    """The run's ``adapt`` section (:func:`run_config_section`)."""
    return run_config_section(run, "adapt")


def annotation_bodies(
    responses: pd.DataFrame, chosen: Iterable[int], rejected: Iterable[int]
) -> list[dict[str, str]]:
    """The ``annotations`` of a ``POST /v1/users`` body for pairs of response ids (columns
    of ``responses``: response_id, prompt, text) — the inverse of :meth:`UserAdapter.resolve`;
    clients, tests and the benchmark label a user this way."""
    by_id = responses.set_index("response_id")
    return [
        {
            "prompt": str(by_id.loc[c, "prompt"]),
            "chosen": str(by_id.loc[c, "text"]),
            "rejected": str(by_id.loc[r, "text"]),
        }
        for c, r in zip(chosen, rejected)
    ]


class UserAdapter:
    """GNN artifacts + response lookup of one run; adapts one user per call."""

    def __init__(
        self, run_dir: str | Path, adapt_cfg: AdaptConfig | None = None, variant: str = "weighted"
    ):
        from copl_ray.graph.artifacts import GNNArtifacts

        if variant not in OPTIMIZATION_FREE_VARIANTS:
            raise ValueError(
                f"serve.adapt_variant: {variant!r} is not optimisation-free "
                f"(choose one of {list(OPTIMIZATION_FREE_VARIANTS)})"
            )
        self.run = RunDir(run_dir)
        self.cfg = adapt_cfg if adapt_cfg is not None else run_adapt_config(self.run)
        self.variant = variant
        require(self.run.gnn, "GNN stage output")
        self.artifacts = GNNArtifacts.load(self.run.gnn)
        responses = pq.read_table(
            require(self.run.data / "responses.parquet", "responses table of the data stage"),
            columns=["response_id", "prompt", "text"],
        ).to_pandas()
        self.index = response_index(responses)
        self.responses = responses.set_index("response_id")

    def resolve(self, items: list[tuple[str, str, str]]) -> list[Annotation]:
        """Texts -> annotations with response ids (None where the text is not in the run)."""
        out = []
        for prompt, chosen, rejected in items:
            out.append(
                Annotation(
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    chosen_id=self.index.get((prompt, chosen)),
                    rejected_id=self.index.get((prompt, rejected)),
                )
            )
        return out

    def adapt(self, annotations: list[Annotation], user_id: str = "") -> UserEmbedding:
        """The optimisation-free embedding of one user from all of their annotations, as
        the user's record (``kind="created"``; ``n_unknown`` counts labels).

        Per-user sparse path (:func:`~copl_ray.graph.adapt.adapt_one_user`): it reads only
        the cached adjacency rows of the labelled responses, so its cost follows the
        user's neighbourhood, not the number of seen users.
        """
        from copl_ray.graph.adapt import adapt_one_user

        # each unknown text gets its own negative id: no graph node, and never "equal" to
        # the other side of its pair (the contract refuses chosen == rejected)
        fresh = iter(range(-1, -2 * len(annotations) - 1, -1))
        chosen = [next(fresh) if a.chosen_id is None else a.chosen_id for a in annotations]
        rejected = [next(fresh) if a.rejected_id is None else a.rejected_id for a in annotations]
        user = adapt_one_user(
            self.artifacts, chosen, rejected, self.cfg, variant=self.variant, user_id=user_id
        )
        return replace(user, kind=CREATED)
