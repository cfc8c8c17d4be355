"""Benchmark the Serve app: /v1/score latency + throughput, user creation, HTTP overhead.

    python benchmarks/serve.py --run-dir runs/tiny                  # 60 s per concurrency
    python benchmarks/serve.py --run-dir runs/tiny --duration 15    # shortened

Measures, on loopback only (127.0.0.1), one replica (``num_cpus=1``), through the
product's ingress (:mod:`copl_ray.serving.ingress`: direct ingress behind HAProxy;
``COPL_SERVE_INGRESS=proxy`` measures Serve's classic HTTP proxy instead), the replica at
the benchmark's own priority (``--worker-niceness 0``):

1. sequential, interleaved call by call so a shared machine's load hits all alike:
   in process ``RewardScorer.score`` (tokenise + forward, the baseline), ``POST /v1/score``,
   ``GET /healthz`` (the replica, no model) and ``GET /-/healthz`` (answered by the
   ingress itself: client + ingress floor). Overhead = p50(HTTP) − p50(in
   process), split by the replica's ``Server-Timing`` header into outside the replica
   (client, HAProxy or the Serve proxy + Ray transport) and inside it (tokenize, batch =
   queue wait + forward);
2. ``POST /v1/score`` at concurrency 1, 8, 64 (closed loop, each client sends its next
   request when the previous answers; users drawn at random so batches mix users):
   p50/p99 latency, throughput, errors;
3. user creation (16 labels) against a synthetic GNN artifact with 10,000 seen users:
   the adaptation alone in process (the server's per-user path, and the batched dense
   path on the same labels for comparison) and ``POST /v1/users`` end to end.

Load averages (1/5/15 min) are recorded at each step: on a shared machine figures need them.
If ``--run-dir`` has no trained reward model, the tiny pipeline (data, gnn, reward) is
run into it first. Every loop is bounded by ``--duration`` / ``--n``. Prints a table and
writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np
from common import machine
from serve_runs import build_large_gnn_run, ensure_run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "n": len(a),
    }


# ---------------------------------------------------------------------- load test
async def closed_loop(url: str, bodies: list[dict], concurrency: int, duration: float) -> dict:
    import aiohttp

    lat: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + duration
    conn = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(i: int, session) -> None:
        rng = random.Random(i)
        while time.perf_counter() < stop:
            body = rng.choice(bodies)
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    if r.status != 200:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                        continue
            except Exception as e:  # counted, never hidden
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    out = _pct(lat) if lat else {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    out.update(concurrency=concurrency, rps=len(lat) / wall, errors=sum(errors.values()))
    out["error_kinds"] = errors
    return out


def server_timing(response) -> dict[str, float]:
    """``Server-Timing`` parts of a response, in ms (the app sends replica/tokenize/batch)."""
    response.raise_for_status()
    out = {}
    for item in response.headers.get("server-timing", "").split(","):
        name, _, dur = item.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


class KeepAliveClient:
    """Minimal HTTP/1.1 keep-alive client (stdlib ``http.client``) for the timed calls.

    The overhead goal is about the server path (ingress + replica), so the client should
    add as little as possible: on the 2-core box ``requests`` spends ~2.6 ms of Python per
    call on top of the socket round trip (HAProxy's ``/-/healthz``: 3.1 ms with requests vs
    0.5 ms with this), which the benchmark reports separately (``http_score_requests``).
    """

    class Response:
        def __init__(self, status: int, headers, body: bytes):
            self.status_code, self.headers, self.content = status, headers, body

        def raise_for_status(self) -> None:
            if self.status_code >= 400:
                raise RuntimeError(f"HTTP {self.status_code}: {self.content[:200]!r}")

    def __init__(self, base: str):
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def request(self, method: str, path: str, body: dict | None = None) -> KeepAliveClient.Response:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        return self.Response(r.status, r.headers, r.read())


def paired_overhead(
    in_process, http_score, http_healthz, ingress_floor, n: int, http_score_alt=None
) -> dict:
    """In-process score, ``POST /v1/score``, ``GET /healthz`` and ``GET /-/healthz``
    interleaved call by call, so a shared machine's load drifts through all alike.
    Overhead = p50(HTTP) − p50(in process); its parts from the replica's Server-Timing
    header: outside the replica (client, HAProxy or the Serve proxy + Ray transport) and
    inside it beside tokenise + batch. ``/-/healthz`` is answered by the ingress itself
    (HAProxy, or the Serve proxy), never the replica: the client + ingress floor."""
    rows = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        in_process()
        t1 = time.perf_counter()
        parts = server_timing(http_score())
        t2 = time.perf_counter()
        server_timing(http_healthz())
        t3 = time.perf_counter()
        ingress_floor().raise_for_status()
        t4 = time.perf_counter()
        if http_score_alt is not None:
            http_score_alt().raise_for_status()
        t5 = time.perf_counter()
        if i >= 10:  # warm-up
            rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, parts, t5 - t4))
    ip, hs, hz, fl = (_pct([r[k] for r in rows]) for k in range(4))
    med = {k: float(np.median([r[4].get(k, 0.0) for r in rows])) for k in rows[0][4]}
    alt = _pct([r[5] for r in rows]) if http_score_alt is not None else None
    return {
        "http_score_requests": alt,
        "http_score": hs,
        "http_healthz": hz,
        "ingress_healthz": fl,
        "server_timing_p50_ms": med,
        "overhead_ms_p50": hs["p50_ms"] - ip["p50_ms"],
        "in_process": ip,
        "overhead_ratio_p50": hs["p50_ms"] / ip["p50_ms"],
        "outside_replica_ms_p50": float(np.median([r[1] * 1e3 - r[4]["replica"] for r in rows])),
    }


def time_calls(fn, n: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return _pct(xs)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/tiny")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per concurrency")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--responses", type=int, default=4, help="responses per /v1/score request")
    ap.add_argument("--adapt-users", type=int, default=10_000)
    ap.add_argument("--labels", type=int, default=16)
    ap.add_argument("--n", type=int, default=200, help="repetitions of the timed single calls")
    ap.add_argument("--batch-wait-ms", type=float, default=1.0)
    ap.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="niceness increment of Ray workers (replicas) over this process (Ray's own: 15)",
    )
    ap.add_argument("--work-dir", default="/tmp/copl_serve_bench")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from copl_ray.env import setup_env
    from copl_ray.serving.ingress import direct_ingress_enabled, use_direct_ingress

    env = setup_env()
    # The product's ingress (direct ingress + HAProxy; COPL_SERVE_INGRESS=proxy for Serve's
    # classic proxy), set before ray.init so the controller and replicas see it.
    use_direct_ingress(private_ports=True)
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")  # slow, shared boxes
    # Ray renices every worker by +15 (RAY_worker_niceness): the replica would then run at
    # a lower priority than the in-process baseline in this driver. Same priority for both.
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    import ray
    import requests
    from ray import serve

    from copl_ray.data.tables import PreferenceTables
    from copl_ray.graph.adapt import adapt_unseen_users
    from copl_ray.serving.adapter import UserAdapter, annotation_bodies
    from copl_ray.serving.scorer import RewardScorer
    from serve_app.app import build_app

    run_dir = Path(args.run_dir).resolve()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    results: dict = {
        "machine": machine(),
        "args": vars(args),
        "ingress": "direct+haproxy" if direct_ingress_enabled() else "serve proxy",
        "niceness": os.nice(0),
        "load_avg_start": os.getloadavg(),
    }
    try:
        ensure_run(run_dir)
        tables = PreferenceTables.read(run_dir / "data")
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        common = {
            "num_replicas": 1,
            "num_cpus": 1,
            "batch_wait_timeout_s": args.batch_wait_ms / 1e3,
            "batch_max_size": 64,
            "max_responses": max(16, args.responses),
            "auth_token_env": "COPL_BENCH_UNSET_TOKEN",
        }
        serve.run(
            build_app({"run_dir": str(run_dir), "users_dir": str(work / "users"), **common}),
            name="bench",
            route_prefix="/",
        )

        # requests: random users x random prompts, `responses` responses each
        import torch

        # the baseline gets the replica's CPU share (Ray sets OMP_NUM_THREADS=num_cpus there)
        torch.set_num_threads(int(common["num_cpus"]))
        scorer = RewardScorer(run_dir)
        users = scorer.users.ids
        rng = random.Random(0)
        by_prompt = tables.responses.groupby("prompt_id")
        prompts = [
            (str(g["prompt"].iloc[0]), [str(t) for t in g["text"]][: args.responses])
            for _, g in by_prompt
        ]
        prompts = [p for p in prompts if len(p[1]) == args.responses] or prompts
        bodies = [
            {"user_id": rng.choice(users), "prompt": p, "responses": rs}
            for p, rs in (rng.choice(prompts) for _ in range(512))
        ]
        b0 = bodies[0]
        emb0 = scorer.users.get(b0["user_id"]).embedding
        sess = requests.Session()
        client = KeepAliveClient(base)
        results["sequential"] = paired_overhead(
            lambda: scorer.score(emb0, b0["prompt"], b0["responses"]),
            lambda: client.request("POST", "/v1/score", b0),
            lambda: client.request("GET", "/healthz"),
            lambda: client.request("GET", "/-/healthz"),
            args.n,
            http_score_alt=lambda: sess.post(f"{base}/v1/score", json=b0, timeout=30),
        )
        results["load_avg_after_sequential"] = os.getloadavg()

        results["load"] = []
        for c in (int(x) for x in args.concurrency.split(",")):
            r = asyncio.run(closed_loop(f"{base}/v1/score", bodies, c, args.duration))
            r["load_avg_after"] = os.getloadavg()
            print(f"[bench] concurrency {c}: {r}")
            results["load"].append(r)
        serve.delete("bench")

        # user creation against 10,000 seen users
        big = work / f"run_{args.adapt_users}_users"
        build_large_gnn_run(run_dir, big, args.adapt_users, labels=8)
        adapter = UserAdapter(big)
        known = set(adapter.artifacts.response_ids.tolist())
        pairs = tables.pairs[
            tables.pairs["response_a"].isin(known) & tables.pairs["response_b"].isin(known)
        ].sample(args.labels, random_state=1)
        anns = annotation_bodies(tables.responses, pairs["response_a"], pairs["response_b"])
        resolved = adapter.resolve([(x["prompt"], x["chosen"], x["rejected"]) for x in anns])
        # the server's per-user sparse path vs the batched dense path on the same labels
        results["adapt_in_process"] = time_calls(lambda: adapter.adapt(resolved), args.n)
        res = adapter.adapt(resolved)
        results["adapt_neighbors"] = res.n_neighbors
        one = pairs.rename(columns={"response_a": "chosen", "response_b": "rejected"})
        one = one[["chosen", "rejected"]].assign(user_id="bench")
        results["adapt_dense_in_process"] = time_calls(
            lambda: adapt_unseen_users(adapter.artifacts, one, adapter.cfg, method="dense"),
            max(20, args.n // 4),
        )
        results["load_avg_after_adapt"] = os.getloadavg()
        serve.run(
            build_app({"run_dir": str(big), "users_dir": str(work / "users_big"), **common}),
            name="bench_big",
            route_prefix="/",
        )
        results["create_user_http"] = time_calls(
            lambda: sess.post(
                f"{base}/v1/users", json={"annotations": anns}, timeout=30
            ).raise_for_status(),
            max(20, args.n // 4),
        )
        results["load_avg_end"] = os.getloadavg()
        serve.delete("bench_big")
    finally:
        serve.shutdown()
        ray.shutdown()
    print_table(results)
    out = Path(args.out or work / "serve_bench.json")
    out.write_text(json.dumps(results, indent=2))
    print(f"[bench] wrote {out}")
    return results


def _ms(x: dict) -> str:
    return f"p50 {x['p50_ms']:.2f} ms  p99 {x['p99_ms']:.2f} ms"


def _load(xs) -> str:
    return "/".join(f"{v:.2f}" for v in xs)


def print_table(r: dict) -> None:
    print(f"\nmachine: {r['machine']}")
    print(f"ingress: {r['ingress']}; niceness {r['niceness']} (replicas alike)")
    print(f"load average (1/5/15 min) at start: {_load(r['load_avg_start'])}")
    q = r["sequential"]
    print(f"in-process score (1 request):  {_ms(q['in_process'])}")
    print(f"HTTP /v1/score, sequential:     {_ms(q['http_score'])} (http.client keep-alive)")
    if q.get("http_score_requests"):
        print(f"  same with requests.Session:   {_ms(q['http_score_requests'])}")
    print(f"HTTP /healthz (replica, no model): {_ms(q['http_healthz'])}")
    print(f"HTTP /-/healthz (client + ingress): {_ms(q['ingress_healthz'])}")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in q["server_timing_p50_ms"].items())
    print(f"inside the replica (Server-Timing p50 ms): {parts}")
    print(
        f"overhead p50: {q['overhead_ms_p50']:.2f} ms (goal <= 5), ratio "
        f"{q['overhead_ratio_p50']:.2f}x; outside the replica {q['outside_replica_ms_p50']:.2f} ms"
    )
    print(f"load average after the sequential part: {_load(r['load_avg_after_sequential'])}")
    print("concurrency | p50 ms | p99 ms | req/s | errors | load avg after")
    for x in r["load"]:
        print(
            f"{x['concurrency']:>11} | {x['p50_ms']:6.1f} | {x['p99_ms']:6.1f} | "
            f"{x['rps']:5.1f} | {x['errors']:>6} | {_load(x['load_avg_after'])}"
        )
    print(
        f"adaptation ({r['args']['labels']} labels, {r['args']['adapt_users']} seen users, "
        f"in process, per-user path): {_ms(r['adapt_in_process'])} (goal <= 5); "
        f"neighbours {r['adapt_neighbors']}"
    )
    print(f"  same labels, batched dense path: {_ms(r['adapt_dense_in_process'])}")
    print(f"POST /v1/users end to end: {_ms(r['create_user_http'])}")
    print(f"load average at the end: {_load(r['load_avg_end'])}")


if __name__ == "__main__":
    main()
