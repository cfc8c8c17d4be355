"""Checks made once before the first stage: every misuse answered before any work is done.

:func:`copl_ray.config.load_config` checks what a config says by itself (types, ranges,
list rules). What needs heavier imports, the file system, the data or the Ray cluster is
checked here, by :func:`run_pipeline` before anything runs:

* :func:`preflight` (before any stage): the run directory is a writable folder; model and
  adaptation-variant names are known; the backbone exists (a local folder, ``tiny-gemma``
  or a reachable/cached hub model) and every ``reward.target_modules`` name is one of its
  ``nn.Linear`` modules (the module list is built once, on the meta device: no weights)
  and ``reward.adapted_layers`` fits its layer stack;
  ``reward.models`` follows the data (``oracle`` only when the source has known groups);
  the Ray resources the config asks for fit the local machine / the address is reachable.
* :func:`check_with_data` (right after the data stage, or up front when it is reused):
  rules that need the data's numbers, e.g. ``eval.label_counts`` vs. the adaptation
  labels unseen users have.
* :func:`check_cluster_resources` (right after connecting to a remote Ray).

Every failure is a :class:`~copl_ray.config.ConfigError` (one line naming the field; the
jobs print it and exit 2).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from copl_ray.config import Config, ConfigError, short_repr, was_set
from copl_ray.variants import REGISTRY

TINY_GEMMA = "tiny-gemma"  # copl_ray.reward.backbone.TINY_GEMMA (kept import-light here)


def _note(msg: str) -> None:
    from copl_ray.console import log

    log(msg)


# --------------------------------------------------------------------- run directory
def check_run_dir(cfg: Config) -> None:
    """``run.dir`` must be (or become) a folder this process can write to.

    An existing file, a path under a file, or a read-only folder used to surface as an
    OSError traceback from the first ``mkdir``/write. ``os.access`` alone is not enough
    (root passes it on a 0o555 folder; some mounts lie), so a real file is written.
    """
    from copl_ray import fsutil

    if fsutil.is_uri(cfg.run.dir):
        return  # written through pyarrow.fs from a local mirror; the URI is checked on push
    root = Path(cfg.run.dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run.dir: {str(root)!r} is an existing file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"run.dir: cannot create {str(root)!r}: {e.strerror or type(e).__name__}"
        ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"run.dir: {str(root)!r} is not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".copl-write-probe-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"run.dir: {str(root)!r} is not writable ({e.strerror or type(e).__name__})"
        ) from None


# ---------------------------------------------------------------------------- names
def check_names(cfg: Config) -> None:
    """``adapt.variants`` and ``reward.models`` name things that exist (where they are
    defined: copl_ray.graph.adapt.VARIANTS, copl_ray.variants.REGISTRY)."""
    from copl_ray.graph.adapt import VARIANTS

    for path, values, known in (
        ("adapt.variants", cfg.adapt.variants, VARIANTS),
        ("reward.models", cfg.reward.models, tuple(REGISTRY)),
    ):
        for i, v in enumerate(values):
            if v not in known:
                raise ConfigError(
                    f"{path}[{i}]: unknown name {short_repr(v)} (known: {', '.join(known)})"
                )


def _hub_allowed() -> bool:
    return bool(os.environ.get("COPL_ALLOW_HUB"))


def backbone_config(cfg: Config) -> Any:
    """The backbone's ``PretrainedConfig``: tiny-gemma's from the config, a local folder's
    or a named backbone's package folder's ``config.json`` (a named backbone whose package
    is not installed fails here, naming the pip command), or a hub model's (from the local
    cache unless COPL_ALLOW_HUB=1)."""
    from transformers import AutoConfig

    from copl_ray.reward.backbone import (
        NAMED_BACKBONES,
        backbone_path,
        hf_token,
        tiny_gemma_config,
    )

    name = cfg.reward.backbone
    if name == TINY_GEMMA:
        try:
            return tiny_gemma_config(cfg.reward)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:  # a GemmaConfig field of the wrong kind
            raise ConfigError(f"reward.backbone_kwargs: {str(e).splitlines()[0]}") from None
    local = Path(backbone_path(name)).expanduser()  # a named backbone: its package folder
    if local.is_dir():
        try:
            return AutoConfig.from_pretrained(str(local))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"reward.backbone: {name!r} is a folder but not a model "
                f"({str(e).splitlines()[0][:200]})"
            ) from None
    try:
        return AutoConfig.from_pretrained(
            name, token=hf_token(), local_files_only=not _hub_allowed()
        )
    except Exception as e:  # OSError / ValueError / HF errors for bad or unreachable names
        hub = (
            "not on the hub or unreachable"
            if _hub_allowed()
            else ("not in the local model cache (the hub is off: COPL_ALLOW_HUB=1 downloads)")
        )
        raise ConfigError(
            f"reward.backbone: {short_repr(name)} is neither a local folder, "
            f"{TINY_GEMMA!r}, a named backbone ({', '.join(NAMED_BACKBONES)}), "
            f"nor a model that can be loaded: {hub} "
            f"({type(e).__name__})"
        ) from None


def meta_backbone(model_config: Any) -> Any:
    """The backbone built on the meta device (no memory, no weights, well under a second)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(model_config)


def linear_module_names(model_config: Any) -> tuple[set[str], set[str]]:
    """(leaf names, full dotted names) of the backbone's ``nn.Linear`` modules, from a
    model built on the meta device (:func:`meta_backbone`)."""
    from torch import nn

    model = meta_backbone(model_config)
    full = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return {n.rsplit(".", 1)[-1] for n in full}, full


def check_target_modules(cfg: Config) -> None:
    """Every ``reward.target_modules`` name is an ``nn.Linear`` of the backbone (the same
    matching rule as copl_ray.mole.model.find_target_linears: last component or full name)."""
    leaves, full = linear_module_names(backbone_config(cfg))
    for i, t in enumerate(cfg.reward.target_modules):
        if t not in leaves and t not in full:
            raise ConfigError(
                f"reward.target_modules[{i}]: {short_repr(t)} is not a linear module of "
                f"{cfg.reward.backbone}; valid names: {', '.join(sorted(leaves))}"
            )


def check_adapted_layers(cfg: Config) -> None:
    """``reward.adapted_layers``: within the backbone's layer count, an architecture the
    frozen-layer cache runs, and a target module in the top layers (the rule the model
    applies at build: copl_ray.reward.frozen_cache.adapted_module_names)."""
    if cfg.reward.adapted_layers is None:
        return
    from copl_ray.reward.frozen_cache import adapted_module_names

    model = meta_backbone(backbone_config(cfg))
    adapted_module_names(model, list(cfg.reward.target_modules), cfg.reward.adapted_layers)


# ------------------------------------------------------------- models follow the data
def _file_has_groups(path: Path) -> bool:
    """True when an own-data file has a ``group`` column with a non-empty value (parquet:
    only that column is read)."""
    from copl_ray.data.validate import read_records

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            if "group" not in pq.read_schema(path).names:
                return False
            values = pq.read_table(path, columns=["group"]).column("group").to_pylist()
        except Exception:  # corrupt file: the data stage names the problem
            return False
    else:
        values = [r.get("group") for r in read_records(path)]
    return any(v is not None and str(v).strip() for v in values)


def data_has_groups(cfg: Config) -> tuple[bool, str]:
    """(known groups?, what to call the data in a message), decided from the source alone."""
    src = cfg.data.source
    if src in ("synthetic", "ufp"):
        return cfg.data.n_groups > 0, f"data.source={src} with data.n_groups={cfg.data.n_groups}"
    if src in ("ukp", "tldr", "prism"):
        return False, f"data.source={src} (annotators have no known groups)"
    if src == "personalllm":  # simulated users: group = the dominant reward model
        return True, "data.source=personalllm"
    if not cfg.data.path:
        return False, "data.path (not set)"
    path = Path(cfg.data.path)
    if not path.is_file():
        return False, str(path)  # the data stage says what is wrong with it
    return _file_has_groups(path), str(path)


def _per_group(models: list[str]) -> list[str]:
    """The models that train one model per known user group (``Variant.per_group``)."""
    return [m for m in models if m in REGISTRY and REGISTRY[m].per_group]


def models_follow_data(cfg: Config) -> None:
    """A per-group model (``oracle``) needs known groups: dropped with a note when the
    preset supplied it, an error when the user named it (``--set reward.models=...`` or
    their own YAML)."""
    grouped = _per_group(cfg.reward.models)
    if not grouped:
        return
    has, what = data_has_groups(cfg)
    if has:
        return
    names = ", ".join(repr(m) for m in grouped)
    if was_set(cfg, "reward.models"):
        raise ConfigError(
            f"reward.models: {names} needs known user groups; {what} has no group column"
        )
    cfg.reward.models = [m for m in cfg.reward.models if m not in grouped]
    if not cfg.reward.models:
        raise ConfigError(f"reward.models: only {names} was asked for, and the data has no groups")
    _note(
        f"note: {what} has no user groups: reward.models without {names} "
        f"({', '.join(cfg.reward.models)})"
    )


# ---------------------------------------------------------------------- Ray resources
def ray_address(cfg: Config) -> str | None:
    """The Ray address a run connects to (config first, then RAY_ADDRESS), None = local."""
    return cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or None


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of ``ray://h:p`` / ``h:p`` / ``http://h:p``; None for auto/local."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_ray_address(cfg: Config, timeout_s: float = 3.0) -> None:
    """A remote address must accept a TCP connection; Ray itself retries for minutes."""
    address = ray_address(cfg)
    if not address:
        return
    hp = _host_port(address)
    if hp is None:
        return
    field = "run.ray_address" if cfg.run.ray_address else "RAY_ADDRESS (environment)"
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            f"{field}: cannot reach Ray at {address} ({reason}); start it with "
            "`ray start --head` or unset it to run a local Ray"
        ) from None


def _compare(cfg: Config, stages: Sequence[str], cpus: float, gpus: float, where: str) -> str:
    """The first request of a stage in ``stages`` above (cpus, gpus), as a message; ""
    when everything fits. A Ray Train run needs all its workers at once."""
    g, t = cfg.gnn, cfg.train
    if "gnn" in stages:
        if g.cpus_per_worker > cpus:
            return f"gnn.cpus_per_worker: {g.cpus_per_worker:g} CPUs, but {where} has {cpus:g}"
        if g.use_gpu and gpus < 1:
            return f"gnn.use_gpu: the GNN stage asks 1 GPU, but {where} has none"
    if "reward" in stages:
        need = t.num_workers * t.cpus_per_worker
        if need > cpus:
            return (
                f"train.cpus_per_worker: {t.num_workers} workers (train.num_workers) x "
                f"{t.cpus_per_worker:g} CPUs = {need:g} CPUs, but {where} has {cpus:g}"
            )
        if t.use_gpu and t.num_workers > gpus:
            return (
                f"train.use_gpu: {t.num_workers} workers (train.num_workers) need one GPU "
                f"each, but {where} has {gpus:g}"
            )
    return ""


def _local_gpus() -> float:
    import torch

    return float(torch.cuda.device_count())


def check_local_resources(cfg: Config, stages: Sequence[str]) -> None:
    """A local Ray has ``run.num_cpus`` (or the machine's) CPUs: a request above that waits
    forever for a node that never comes, so it fails here, naming the field."""
    if ray_address(cfg):
        return
    import ray

    if ray.is_initialized():  # a Ray this process already runs (tests, notebooks)
        res = ray.cluster_resources()
        cpus, gpus, where = res.get("CPU", 0.0), res.get("GPU", 0.0), "the running Ray"
    else:
        cpus = float(cfg.run.num_cpus or os.cpu_count() or 1)
        gpus = _local_gpus()
        src = "run.num_cpus" if cfg.run.num_cpus else "this machine"
        where = f"the local Ray ({src})"
    msg = _compare(cfg, stages, cpus, gpus, where)
    if msg:
        raise ConfigError(msg)


def check_cluster_resources(cfg: Config, stages: Sequence[str]) -> None:
    """After connecting to a remote Ray: a request above what its nodes have now is a
    warning, not an error, since an autoscaling cluster adds nodes when asked."""
    import ray

    if not ray_address(cfg) or not ray.is_initialized():
        return
    res = ray.cluster_resources()
    msg = _compare(cfg, stages, res.get("CPU", 0.0), res.get("GPU", 0.0), "the cluster now")
    if msg:
        _note(
            f"warning: {msg}; the stage waits until an autoscaler adds nodes "
            "(a fixed-size cluster never will: stop with Ctrl-C and lower the request)"
        )


# ------------------------------------------------------------------------ the checks
def preflight(cfg: Config, stages: Sequence[str]) -> None:
    """Every check that can be made before the first stage, for the stages up to the last
    requested one (``stages``: what may run or be reused). May drop ``oracle`` from
    ``cfg.reward.models`` (see :func:`models_follow_data`), so it runs before any hash."""
    check_run_dir(cfg)
    if {"gnn", "reward", "eval"} & set(stages):
        from copl_ray.tracking import check_tracking

        check_names(cfg)
        check_tracking(cfg)  # MLflow / W&B switches: package and key present
    if "reward" in stages or "eval" in stages:
        models_follow_data(cfg)
        check_target_modules(cfg)
        check_adapted_layers(cfg)


def check_ray_request(cfg: Config, stages: Sequence[str]) -> None:
    """Before the first Ray stage (``stages``: those that will run, not the reused ones):
    the address answers and the local Ray can hold what they ask for."""
    if not {"gnn", "reward", "eval"} & set(stages):
        return
    check_ray_address(cfg)
    check_local_resources(cfg, stages)


def check_with_data(cfg: Config, run: Any, stages: Sequence[str]) -> None:
    """Rules that need the data stage's output (run.data): ``oracle`` needs users with a
    known group; ``eval.label_counts`` cannot exceed the adaptation (survey) labels the
    unseen users have."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    users_file, ann_file = run.data / "users.parquet", run.data / "annotations.parquet"
    if not (users_file.exists() and ann_file.exists()):
        return
    grouped = _per_group(cfg.reward.models)
    if "reward" in stages and grouped:
        groups = pq.read_table(users_file, columns=["group"]).column("group").to_pylist()
        if not any(g for g in groups):
            raise ConfigError(
                f"reward.models: {', '.join(repr(m) for m in grouped)} needs known user groups; "
                "the data stage found none "
                f"({run.data / 'users.parquet'})"
            )
    if "eval" not in stages:
        return
    users = pq.read_table(users_file, columns=["user_id", "seen"])
    unseen = pc.filter(users["user_id"], pc.invert(users["seen"]))
    if len(unseen) == 0:
        return
    ann = pq.read_table(ann_file, columns=["user_id", "split"])
    mask = pc.and_(pc.equal(ann["split"], "survey"), pc.is_in(ann["user_id"], unseen))
    survey = pc.filter(ann["user_id"], mask)
    most = max(pc.value_counts(survey).field("counts").to_pylist(), default=0)
    for i, k in enumerate(cfg.eval.label_counts):
        if k > most:
            raise ConfigError(
                f"eval.label_counts[{i}]: {k} > the most adaptation labels an unseen user "
                f"has ({most})"
            )
