"""Resolved settings of one served run: ``ServeConfig`` + where the run lives + auth hash.

Precedence (later wins): ``ServeConfig`` defaults < the ``serve`` section of
``run_dir/config.yaml`` (saved by the pipeline) < application args (``serve run ...
key=value`` or ``args:`` in ``serve_app/config.yaml``). Values from the command line
arrive as strings and are parsed as YAML scalars, then validated by the config tree,
so a bad value fails with the field path (``serve.max_responses: expected int, ...``).

The bearer token never travels: the builder reads it from the environment variable
named by ``serve.auth_token_env`` and hands replicas only its SHA-256, which is also
what a config file may carry (``auth_token_sha256``) instead of a secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import yaml
from ray.serve.exceptions import RayServeException

from copl_ray.config import Config, ConfigError, ServeConfig, config_from_dict

APP_KEYS = ("run_dir", "num_replicas", "auth_token_sha256")
SERVE_KEYS = tuple(f.name for f in dataclasses.fields(ServeConfig))
RUN_DIR_ENV = "COPL_RUN_DIR"


class ServeArgsError(ConfigError, RayServeException, click.ClickException):
    """A bad application arg or run directory, reported by Serve as one line.

    Serve surfaces a builder's exception in two places, and this class is what each shows
    without a traceback: ``serve run serve_app.app:build_app ...`` calls the builder in the
    CLI before Ray starts, inside Click, which prints a ``ClickException`` with
    :meth:`show` and exits with :attr:`exit_code`; ``serve run CONFIG`` / ``serve deploy``
    build in the controller's build task, which reports a ``RayServeException`` as its
    message only. It stays a :class:`ConfigError` for every other caller.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, message)

    def __str__(self) -> str:
        return self.message

    def show(self, file: IO[Any] | None = None) -> None:
        print(f"error: {self.message}", file=file or sys.stderr)


@dataclass
class ServeSettings(ServeConfig):
    run_dir: str = ""
    num_replicas: int | None = None
    auth_token_sha256: str | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scalar(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            return value
    return value


def resolve_settings(args: dict[str, Any]) -> ServeSettings:
    """Validate application args and merge them over the run's saved ``serve`` config."""
    unknown = sorted(set(args) - set(APP_KEYS) - set(SERVE_KEYS))
    if unknown:
        raise ConfigError(
            f"serve app args: unknown key(s) {unknown} (known: {', '.join(APP_KEYS + SERVE_KEYS)})"
        )
    run_dir = args.get("run_dir") or os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise ConfigError(f"run_dir: not given (pass run_dir=PATH or set ${RUN_DIR_ENV})")
    root = Path(str(run_dir)).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"run_dir: {root} is not a directory")
    saved = root / "config.yaml"
    base: dict[str, Any] = Config().to_dict()
    if saved.exists():
        loaded = yaml.safe_load(saved.read_text()) or {}
        base["serve"].update(loaded.get("serve") or {})
    for key in SERVE_KEYS:
        if key in args:
            base["serve"][key] = _scalar(args[key])
    serve_cfg = config_from_dict({"serve": base["serve"]}).serve

    num_replicas = _scalar(args.get("num_replicas"))
    if num_replicas is not None and (not isinstance(num_replicas, int) or num_replicas < 1):
        raise ConfigError(f"num_replicas: expected a positive int, got {num_replicas!r}")
    token_hash = args.get("auth_token_sha256")
    token = os.environ.get(serve_cfg.auth_token_env) if serve_cfg.auth_token_env else None
    if token:
        token_hash = hashlib.sha256(token.encode()).hexdigest()
    users_dir = serve_cfg.users_dir or str(root / "serve" / "users")
    return ServeSettings(
        **{**dataclasses.asdict(serve_cfg), "users_dir": users_dir},
        run_dir=str(root),
        num_replicas=num_replicas,
        auth_token_sha256=token_hash or None,
    )
