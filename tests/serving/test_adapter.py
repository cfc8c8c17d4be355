"""copl_ray/serving/adapter.py: the saved ``adapt`` section (defaults without one; a bad one
names the file and field), annotation bodies from response ids, and a :class:`UserAdapter`
on the 3-user GNN artifacts of tests/graph/test_artifacts.py: texts resolve to ids,
``n_unknown`` counts *labels* with an unknown text, and a user whose only known label
reaches one seen user gets that user's embedding (one neighbour: softmax weight 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from copl_ray.artifacts import RunDir
from copl_ray.config import AdaptConfig, ConfigError
from copl_ray.graph.adapt import adapt_one_user
from copl_ray.graph.users import CREATED
from copl_ray.serving.adapter import UserAdapter, annotation_bodies, run_adapt_config
from copl_ray.serving.store import Annotation
from tests.graph.test_artifacts import write_artifacts

RESPONSES = pd.DataFrame(
    {
        "response_id": np.array([10, 11, 12, 13], dtype=np.int64),
        "prompt_id": np.array([0, 0, 1, 1], dtype=np.int64),
        "prompt": ["p0", "p0", "p1", "p1"],
        "text": ["r10", "r11", "r12", "r13"],
    }
)


def test_run_adapt_config_reads_only_the_adapt_section(tmp_path):
    run = RunDir(tmp_path)
    assert run_adapt_config(run) == AdaptConfig()  # no config.yaml: defaults
    saved = {"adapt": {"kappa": 0.5, "hops": 4}, "reward": {"no_such_field": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_adapt_config(run) == AdaptConfig(kappa=0.5, hops=4)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"adapt": None}))
    assert run_adapt_config(run) == AdaptConfig()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"adapt": {"kappa": -1.0}}))
    with pytest.raises(ConfigError) as e:
        run_adapt_config(run)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'config.yaml'}: ") and "adapt.kappa" in msg
    assert "\n" not in msg


def test_annotation_bodies_are_the_texts_of_the_ids():
    bodies = annotation_bodies(RESPONSES, [10, 13], [11, 12])
    assert bodies == [
        {"prompt": "p0", "chosen": "r10", "rejected": "r11"},
        {"prompt": "p1", "chosen": "r13", "rejected": "r12"},
    ]


@pytest.fixture()
def adapter(tmp_path) -> UserAdapter:
    run = RunDir(tmp_path)
    write_artifacts(run.gnn, normalized=True)
    run.data.mkdir(parents=True)
    RESPONSES.to_parquet(run.data / "responses.parquet")
    return UserAdapter(run.root)


def test_only_optimisation_free_variants(tmp_path):
    with pytest.raises(ValueError, match=r"^serve.adapt_variant: 'user_opt' is not"):
        UserAdapter(tmp_path, variant="user_opt")


def test_resolve_and_adapt_count_unknown_labels(adapter):
    items = [("p0", "r10", "r11"), ("p0", "r10", "new"), ("p1", "new", "other")]
    ann = adapter.resolve(items)
    assert [(a.chosen_id, a.rejected_id) for a in ann] == [(10, 11), (10, None), (None, None)]
    user = adapter.adapt(ann, user_id="u*")
    assert user.user_id == "u*" and user.kind == CREATED
    assert user.n_unknown == 2  # labels with an unknown text; the last has two, counts once
    # the same labels through the offline per-user path (unknown texts: fresh negative ids)
    offline = adapt_one_user(adapter.artifacts, [10, 10, -2], [11, -1, -3], adapter.cfg)
    np.testing.assert_array_equal(user.embedding, offline.embedding)
    assert offline.n_unknown == 2


def test_one_neighbour_gives_that_users_embedding(adapter):
    """``10 ≻ 11``: only user a chose 10, so e* = e_a = (1, 0) (unit norm already)."""
    user = adapter.adapt([Annotation("p0", "r10", "r11", 10, 11)], user_id="new")
    assert user.n_neighbors == 1 and not user.fallback and user.n_unknown == 0
    np.testing.assert_allclose(user.embedding, [1.0, 0.0], atol=1e-6)
