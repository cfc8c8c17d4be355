"""copl_ray/paper.py: the CoPL paper's published accuracies, keyed by the variant registry."""

from __future__ import annotations

import pytest

from copl_ray.config import load_config
from copl_ray.paper import (
    PAPER_BASELINES,
    PAPER_SEEN,
    PAPER_SEEN_7B,
    PAPER_T2,
    PAPER_UNSEEN,
    model_label,
    paper_numbers,
)
from copl_ray.variants import COPL, NO_GNN, ORACLE, REGISTRY, UNIFORM


def test_every_row_is_a_variant() -> None:
    tables = [PAPER_SEEN, PAPER_SEEN_7B, PAPER_UNSEEN, *PAPER_T2.values()]
    assert all(set(t) <= set(REGISTRY) for t in tables)
    # the paper's Table 1 rows: Oracle, Uniform, its baselines and CoPL
    assert {ORACLE, UNIFORM, COPL, *PAPER_BASELINES} <= set(PAPER_SEEN)


def test_model_label_variants_baselines_and_unknown() -> None:
    for name, v in REGISTRY.items():
        assert model_label(name) == v.label
    assert model_label("my_model") == "my_model"  # an unknown name is its own label


def test_ufp2_all_gemma_2b_cells_are_the_paper_table() -> None:
    p = paper_numbers(load_config("ufp2-gemma-2b"))
    assert p["column"] == "UF-P-2-ALL" and p["backbone"] == "gemma-2b-it"
    # Table 1, UF-P-2-ALL: CoPL 63.81 seen, 63.92 unseen; Oracle 64.53 (fractions here)
    assert p["seen"][COPL] == pytest.approx(0.6381)
    assert p["unseen"][COPL] == pytest.approx(0.6392)
    assert p["seen"][ORACLE] == pytest.approx(0.6453)
    assert p["seen"]["pal"] == pytest.approx(0.5995)
    # Table 2 comes with the UF-P-2-ALL column only
    assert p["common"][UNIFORM] == pytest.approx(0.7452)
    assert p["controversial"][COPL] == pytest.approx(0.5689)


def test_avg_column_leaves_out_the_all_only_rows() -> None:
    p = paper_numbers(load_config("ufp4-gemma-2b", ["data.sampling=avg"]))
    assert p["column"] == "UF-P-4-AVG"
    assert p["seen"][COPL] == pytest.approx(0.6208)
    assert NO_GNN not in p["seen"]  # Table 3 reports ALL columns only
    assert p["common"] == {} and p["controversial"] == {}


def test_7b_has_copl_seen_only() -> None:
    p = paper_numbers(load_config("ufp4-gemma-7b"))
    assert p["backbone"] == "gemma-7b-it"
    assert p["seen"] == {COPL: pytest.approx(0.6290)}
    assert p["unseen"] == {} and p["common"] == {}


def test_no_paper_figures_outside_ufp() -> None:
    assert paper_numbers(load_config("tiny")) is None  # synthetic data
    assert paper_numbers(load_config("ukp")) is None
