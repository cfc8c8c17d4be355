"""The variant registry (copl_ray/variants.py) and the layout rules issue 19 set.

The registry is the one place a variant name is spelled; these tests fail when a name is
written again elsewhere in the package, when a registered variant cannot be built, or when
the code grows a second owner of the user-embedding file or a function past one screen.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from copl_ray import variants
from copl_ray.config import RewardConfig
from copl_ray.reward.model import PersonalRewardModel

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (REPO / "copl_ray", REPO / "serve_app")
MAX_FUNCTION_LINES = 80
# Same word, other meaning: Ray Tune's uniform distribution in a search space.
NOT_A_VARIANT = {
    ("copl_ray/tune.py", "uniform"),
    # the onboarding selectors' names (config.py's Selector literal), not models
    ("copl_ray/config.py", "copl"),
    ("copl_ray/config.py", "pref"),
}


def _sources() -> list[Path]:
    return sorted(p for d in PACKAGES for p in d.rglob("*.py"))


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal in the file's code that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_variant_names_are_spelled_only_in_the_registry():
    names = set(variants.REGISTRY)
    hits = [
        f"{p.relative_to(REPO)}:{line}: {value!r}"
        for p in _sources()
        if p != REPO / "copl_ray" / "variants.py"
        for line, value in _string_constants(p)
        if value in names and (str(p.relative_to(REPO)), value) not in NOT_A_VARIANT
    ]
    assert hits == [], "variant names written outside copl_ray/variants.py:\n" + "\n".join(hits)


def test_every_registered_variant_builds_and_unknown_names_fail_in_one_line():
    for v in variants.REGISTRY.values():
        model = PersonalRewardModel.build(RewardConfig(), v.architecture, user_dim=8, n_users=3)
        assert model.variant == v.architecture
        # a per-group variant trains its architecture once per group, without user input
        assert not v.per_group or v.user_input == "none"
    with pytest.raises(ValueError, match=r"^unknown model 'vlp' \(known: oracle, uniform, copl"):
        variants.variant("vlp")


def test_user_embedding_file_has_one_owner():
    owners = [p for p in _sources() if "user_embeddings.parquet" in p.read_text()]
    assert owners == [REPO / "copl_ray" / "graph" / "users.py"]


def test_no_function_in_the_package_is_longer_than_a_screen():
    long = [
        f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p in _sources()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_file_cites_a_document_the_repository_lacks():
    cited = re.compile(r"\b(?:METHOD|DESIGN|REFERENCE|PEERS|STACK|ANCHORS)\.md\b|shared/docs")
    files = [*_sources(), REPO / "README.md", *(REPO / "docs").glob("*.md")]
    hits = [str(p.relative_to(REPO)) for p in files if cited.search(p.read_text())]
    assert hits == []


def test_tiny_baselines_preset_trains_every_model_of_the_comparison():
    """The comparison preset: CoPL, Uniform, Oracle and every baseline, on the tiny data."""
    from copl_ray.config import load_config

    cfg, tiny = load_config("tiny-baselines"), load_config("tiny")
    assert set(cfg.reward.models) == {*variants.DEFAULT_MODELS, *variants.BASELINES}
    assert cfg.data == tiny.data and cfg.gnn == tiny.gnn and cfg.train == tiny.train
    assert all(variants.variant(m).adapts for m in variants.BASELINES)
