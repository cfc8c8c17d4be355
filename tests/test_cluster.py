"""cluster.yaml is a valid Ray cluster-launcher config, sized for the 7b preset."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

from copl_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def _cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema():
    cfg = _cluster()
    jsonschema.validate(cfg, json.loads(SCHEMA.read_text()))  # raises naming the bad field
    # what `ray up` does: fill defaults, then ray's validator (schema + cross-field checks)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_schema_check_is_not_vacuous():
    cfg = _cluster()
    cfg["available_node_types"]["ray.worker.gpu_8xh100"]["resources"]["GPU"] = "eight"
    try:
        jsonschema.validate(cfg, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as e:
        assert "eight" in str(e)
    else:
        raise AssertionError("schema accepted a non-integer GPU count")


def test_cluster_fits_the_7b_preset_and_installs_the_package():
    cfg = _cluster()
    preset = load_config("ufp4-gemma-7b")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # CPU head
    gpu_nodes = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert all(t.get("min_workers", 0) == 0 for t in gpu_nodes)  # autoscaled from zero
    # one node type holds all the 7b preset's workers (ZeRO-3 stays inside NVLink)
    assert max(t["resources"]["GPU"] for t in gpu_nodes) >= preset.train.num_workers
    assert any("pip install" in c and "-e" in c for c in cfg["setup_commands"])
    assert "." in cfg["file_mounts"].values()
    assert cfg["idle_timeout_minutes"] > 0
