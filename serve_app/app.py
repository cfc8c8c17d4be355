"""Ray Serve application: per-user reward scoring and optimisation-free user adaptation.

Start it on a finished run directory (OpenAPI docs at ``/docs``)::

    serve run serve_app.app:build_app run_dir=runs/tiny          # dev, foreground
    serve deploy serve_app/config.yaml                            # on a running cluster

Requests from different users are batched together by ``@serve.batch``: one forward,
one user embedding per row. Never ``@serve.multiplexed`` on the user —
Serve splits batches by model id, which would destroy cross-user batching (docs/stack-notes.md S8).
Users created over HTTP live in a shared folder (:mod:`copl_ray.serving.store`), so
every replica sees them at once and they survive restarts and redeploys.
"""

import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from ray import serve

from copl_ray.config import ConfigError
from copl_ray.graph.users import UserEmbedding
from copl_ray.serving import timing
from copl_ray.serving.ingress import use_direct_ingress
from copl_ray.serving.scorer import Rows, RunDirIncomplete, check_run_dir
from copl_ray.serving.settings import ServeArgsError, ServeSettings, resolve_settings
from copl_ray.serving.store import (
    StoredUser,
    StoreError,
    UserStore,
    now,
    prepare_store_folder,
)
from serve_app.schemas import (
    AnnotationsRequest,
    CompareRequest,
    CompareResponse,
    QuestionOut,
    QuestionsRequest,
    QuestionsResponse,
    ScoreRequest,
    ScoreResponse,
    UserCreated,
    UserInfo,
    configure_limits,
    quotable_errors,
)

# `serve run serve_app.app:build_app ...` imports this module before it starts a local Ray:
# choosing the ingress here lets that Ray's controller and replicas inherit it. A cluster
# started elsewhere (`ray start`) decides for itself: see copl_ray/serving/ingress.py.
use_direct_ingress()

logger = logging.getLogger("ray.serve")
REPLICA_HEADER = "X-Replica-Id"


class BearerToken(HTTPBearer):
    """Declared by the routes that need the bearer token (documents it in OpenAPI);
    enforced by :class:`TokenFirstRoute` before the body is read. Recognised by class,
    not identity: Serve pickles the app, so a replica's routes hold copies."""


BEARER = BearerToken(
    auto_error=False,
    description="needed when the server was built with a token (serve.auth_token_env)",
)


class TokenFirstRoute(APIRoute):
    """Routes declaring :data:`BEARER` check the token before FastAPI reads the body.

    FastAPI parses and validates the body before it runs any dependency, so a token check
    written as a dependency or in the handler answers an unauthenticated caller with the
    body's 422 details (or a 500). Here the check wraps the whole request handler: no
    token, no parsing. The token hash is the replica's (``RewardServer._authorize``).
    """

    def get_route_handler(self):
        handler = super().get_route_handler()
        if not any(
            isinstance(getattr(d, "dependency", None), BearerToken) for d in self.dependencies
        ):
            return handler

        async def token_first(request: Request):
            server = serve.get_replica_context().servable_object
            server._authorize(request.headers.get("authorization"))
            return await handler(request)

        return token_first


api = FastAPI(
    title="copl-ray reward server",
    version="1",
    description="Personalised reward scores (CoPL) per user; new users adapted from a few "
    "labels without any gradient step.",
)
api.router.route_class = TokenFirstRoute


class ReplicaHeaders:
    """Pure-ASGI middleware naming the replica that answered (``X-Replica-Id``) and the
    time the request spent inside it (``Server-Timing: replica;dur=<ms>``, from the ASGI
    call to the response start), with the scoring routes' parts: ``tokenize`` and
    ``batch`` (queue wait + the forward of the batch the request rode in).

    Lets clients and tests see cross-replica behaviour, and the benchmark split the HTTP
    overhead into the ingress hop and the replica's own share. Pure ASGI because
    Starlette's ``BaseHTTPMiddleware`` costs about a millisecond per request.
    """

    def __init__(self, app):
        self.app = app
        self._header: tuple[bytes, bytes] | None = None

    def _value(self) -> tuple[bytes, bytes] | None:
        if self._header is None:
            try:
                rid = serve.get_replica_context().replica_id.unique_id
            except Exception:  # outside a replica (never in production)
                return None
            self._header = (REPLICA_HEADER.lower().encode(), rid.encode())
        return self._header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        header = self._value()
        parts = timing.open_record()  # same task as the route handler, which fills it

        async def send_named(message):
            if message["type"] == "http.response.start":
                parts["replica"] = time.perf_counter() - t0
                extra = [(b"server-timing", timing.header_value(parts))]
                if header is not None:
                    extra.append(header)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_named)


api.add_middleware(ReplicaHeaders)


@api.exception_handler(StoreError)
async def _store_unavailable(request, exc: StoreError) -> JSONResponse:
    """The shared user store failed (disk full, unreadable document): 503, message only."""
    logger.error("user store error on %s: %s", request.url.path, exc)
    return JSONResponse({"detail": f"user store unavailable: {exc}"}, status_code=503)


@api.exception_handler(RequestValidationError)
async def _invalid_body(request, exc: RequestValidationError) -> JSONResponse:
    """422 with the field paths, in a body that always renders: FastAPI's default handler
    fails (500) on a ``NaN`` input or a lone surrogate, and echoes any input in full."""
    return JSONResponse({"detail": quotable_errors(exc.errors())}, status_code=422)


@dataclass
class _Job:
    emb: np.ndarray  # [D]
    rows: Rows  # (input_ids, attention_mask) [n, max_length], one row per response


def _rows_in(jobs: list[_Job]) -> int:
    """Batch size counted in rows (responses), not requests."""
    return sum(len(j.rows[0]) for j in jobs)


def _not_found(user_id: str) -> HTTPException:
    return HTTPException(
        status_code=404,
        detail=f"unknown user {user_id!r}: not a user of this run and not created through "
        "POST /v1/users (create one from a few labelled pairs first)",
    )


def _too_many(total: int, limit: int) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "too_long",
                "loc": ("body", "annotations"),
                "msg": f"the user would have {total} annotations; the limit is "
                f"serve.max_annotations={limit}",
                "input": None,
            }
        ]
    )


@serve.deployment(name="CoplRewardServer", health_check_period_s=10)
@serve.ingress(api)
class RewardServer:
    def __init__(self, settings: dict[str, Any]):
        from copl_ray.env import setup_env
        from copl_ray.serving.adapter import UserAdapter
        from copl_ray.serving.questions import QuestionService
        from copl_ray.serving.scorer import RewardScorer

        setup_env()
        s = ServeSettings(**settings)
        self.settings = s
        configure_limits(s.max_responses, s.max_chars, s.max_annotations, s.max_questions)
        self.scorer = RewardScorer(s.run_dir, model_name=s.model, device=s.device)
        self.adapter = UserAdapter(s.run_dir, variant=s.adapt_variant)
        self.store = UserStore(s.users_dir)
        self.questions = QuestionService(self.adapter)
        self.questions.warmup()
        self._score_batch.set_max_batch_size(max(s.batch_max_size, 2 * s.max_responses))
        self._score_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self._in_flight = 0  # /v1/score + /v1/compare requests between encode and answer
        self.scorer.warmup()
        self._started = time.time()

    # ------------------------------------------------------------------ helpers
    def _user(self, user_id: str) -> tuple[UserEmbedding, StoredUser | None]:
        """The user's record — a user of the run (trained or adapted offline), else one
        created through ``POST /v1/users`` (then with its store entry) — or 404."""
        known = self.scorer.users.get(user_id)
        if known is not None:
            return known, None
        stored = self.store.get(user_id)
        if stored is None:
            raise _not_found(user_id)
        return stored.user, stored

    def _authorize(self, authorization: str | None) -> None:
        """Bearer token check for user-creating endpoints (constant-time; never logged).
        Called by :class:`TokenFirstRoute` before the request body is read."""
        expected = self.settings.auth_token_sha256
        if not expected:
            return
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(
                status_code=401,
                detail="this endpoint needs 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        given = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(status_code=403, detail="invalid bearer token")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_rows_in)
    async def _score_batch(self, jobs: list[_Job]) -> list[np.ndarray]:
        requests = [(j.emb, j.rows) for j in jobs]
        if len(jobs) == 1 and self._in_flight <= 1:
            # Alone on the replica: nothing to overlap with, so skip the thread hand-off
            # (on a busy host each hop can wait a scheduler slice).
            return self.scorer.score_requests(requests)
        # Otherwise the forward runs in a worker thread so the event loop keeps accepting
        # (validating, tokenising) requests that form the next batch meanwhile.
        return await asyncio.to_thread(self.scorer.score_requests, requests)

    async def _score(self, emb: np.ndarray, prompt: str, responses: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        job = _Job(emb, self.scorer.encode(prompt, responses))
        t1 = time.perf_counter()
        # Wait for company only when there is some: a request that finds the replica idle
        # is batched alone at once (at concurrency 1 a fixed wait is pure latency); while
        # others are in flight, the next batch collects arrivals for up to
        # serve.batch_wait_timeout_s. Set before enqueueing: the batch queue reads the
        # timeout when this job arrives (same event loop, no race).
        self._in_flight += 1
        wait_s = self.settings.batch_wait_timeout_s if self._in_flight > 1 else 0.0
        self._score_batch.set_batch_wait_timeout_s(wait_s)
        try:
            return await self._score_batch(job)
        finally:
            self._in_flight -= 1
            timing.record(tokenize=t1 - t0, batch=time.perf_counter() - t1)

    # ------------------------------------------------------------------ routes
    @api.post("/v1/score", response_model=ScoreResponse)
    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """One score per response for this user (higher = preferred by the user)."""
        user, _ = self._user(req.user_id)
        scores = await self._score(user.embedding, req.prompt, req.responses)
        return ScoreResponse(
            user_id=req.user_id, scores=[float(x) for x in scores], model=self.settings.model
        )

    @api.post("/v1/compare", response_model=CompareResponse)
    async def compare(self, req: CompareRequest) -> CompareResponse:
        """p(a ≻ b | user) = σ(f(a) − f(b)); a and b are tokenised once, scored in one forward."""
        user, _ = self._user(req.user_id)
        sa, sb = (float(x) for x in await self._score(user.embedding, req.prompt, [req.a, req.b]))
        p = float(1.0 / (1.0 + np.exp(-(sa - sb))))
        return CompareResponse(
            user_id=req.user_id, p_a_over_b=p, score_a=sa, score_b=sb, model=self.settings.model
        )

    @api.post(
        "/v1/users", response_model=UserCreated, status_code=201, dependencies=[Depends(BEARER)]
    )
    async def create_user(self, req: AnnotationsRequest) -> UserCreated:
        """A new user from a few labelled pairs (optimisation-free adaptation, no gradient)."""
        anns = self.adapter.resolve([(a.prompt, a.chosen, a.rejected) for a in req.annotations])
        adapted = await asyncio.to_thread(self.adapter.adapt, anns)

        def make(user_id: str) -> StoredUser:
            t = now()
            return StoredUser(replace(adapted, user_id=user_id), anns, t, t)

        return UserCreated.of(self.store.create(make))

    @api.post(
        "/v1/users/{user_id}/annotations",
        response_model=UserCreated,
        dependencies=[Depends(BEARER)],
    )
    async def add_annotations(self, user_id: str, req: AnnotationsRequest) -> UserCreated:
        """Refine a created user: re-adapt from all of their labels (old + new)."""
        if self.scorer.users.get(user_id) is not None:
            raise HTTPException(
                status_code=409,
                detail=f"user {user_id!r} belongs to the run (GNN stage); only users created "
                "through POST /v1/users can be refined",
            )
        if self.store.get(user_id) is None:
            raise _not_found(user_id)
        new = self.adapter.resolve([(a.prompt, a.chosen, a.rejected) for a in req.annotations])
        return UserCreated.of(await asyncio.to_thread(self._refine, user_id, new))

    def _refine(self, user_id: str, new: list) -> StoredUser:
        """Read-modify-write of one created user under the store's cross-replica lock."""
        with self.store.locked(user_id):
            user = self.store.get(user_id)
            if user is None:
                raise _not_found(user_id)
            anns = user.annotations + new
            if len(anns) > self.settings.max_annotations:
                raise _too_many(len(anns), self.settings.max_annotations)
            refined = StoredUser(
                self.adapter.adapt(anns, user_id), anns, user.created_at, now(), user.version + 1
            )
            self.store.put(refined)
        return refined

    @api.post("/v1/questions", response_model=QuestionsResponse)
    async def opening_questions(self, req: QuestionsRequest) -> QuestionsResponse:
        """The first questions to ask a new user (no answer yet; the same for everyone).
        Create the user from the answers with POST /v1/users."""
        return self._questions(None, [], req)

    @api.post("/v1/users/{user_id}/questions", response_model=QuestionsResponse)
    async def next_questions(self, user_id: str, req: QuestionsRequest) -> QuestionsResponse:
        """The next questions for a created user, chosen from their answers so far; answer
        them through POST /v1/users/{user_id}/annotations."""
        if self.scorer.users.get(user_id) is not None:
            raise HTTPException(
                status_code=409,
                detail=f"user {user_id!r} belongs to the run (GNN stage): it has a trained "
                "embedding; questions are for users created through POST /v1/users",
            )
        stored = self.store.get(user_id)
        if stored is None:
            raise _not_found(user_id)
        return await asyncio.to_thread(self._questions, user_id, stored.annotations, req)

    def _questions(self, user_id: str | None, anns: list, req: QuestionsRequest):
        from copl_ray.serving.questions import NoCandidates

        name = req.selector or self.settings.question_selector
        try:
            asked = self.questions.ask(anns, req.k, name, user_id or "")
        except NoCandidates as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        return QuestionsResponse(
            user_id=user_id,
            selector=name,
            n_answered=len(anns),
            questions=[QuestionOut(**vars(q)) for q in asked],
        )

    @api.get("/v1/users/{user_id}", response_model=UserInfo)
    async def get_user(
        self, user_id: str, include_embedding: bool = Query(default=False)
    ) -> UserInfo:
        """What the server knows about a user (trained, adapted offline, or created here)."""
        return UserInfo.of(*self._user(user_id), include_embedding=include_embedding)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the replica's event loop answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: model loaded, warm, and the user store reachable."""
        ok = self.store.folder.is_dir() and os.access(self.store.folder, os.W_OK)
        body = {
            "status": "ready" if ok else "store unavailable",
            "run_dir": str(self.settings.run_dir),
            "model": self.settings.model,
            "variant": self.scorer.variant,
            "adapt_variant": self.settings.adapt_variant,
            "n_run_users": len(self.scorer.users),
            "embedding_dim": self.scorer.users.dim,
            "uptime_s": round(time.time() - self._started, 1),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    def check_health(self) -> None:
        """Serve's health check: a replica whose user store vanished is restarted."""
        if not self.store.folder.is_dir():
            raise RuntimeError(f"user store {self.store.folder} is not reachable")


def checked_settings(args: dict[str, Any]) -> ServeSettings:
    """Every check the builder can make before Ray deploys anything: the args, the run
    directory's artifacts and the user store folder (a real write). A failure is one
    :class:`ServeArgsError` line naming the field, instead of a traceback from the CLI or
    replicas failing their constructor in Serve's retry loop."""
    try:
        s = resolve_settings(dict(args))
    except ConfigError as e:
        raise ServeArgsError(str(e)) from None
    try:
        check_run_dir(s.run_dir, s.model)
    except RunDirIncomplete as e:
        raise ServeArgsError(f"run_dir: {e}") from None
    try:
        prepare_store_folder(s.users_dir)
    except StoreError as e:
        raise ServeArgsError(
            f"serve.users_dir: {e} (default run_dir/serve/users; pass users_dir=PATH)"
        ) from None
    return s


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run serve_app.app:build_app run_dir=... [key=value]``.

    Keys: ``run_dir`` (else ``$COPL_RUN_DIR``), ``num_replicas`` (fixed count instead of
    autoscaling), ``auth_token_sha256``, and any ``ServeConfig`` field (``max_responses=4``).
    Values override the ``serve`` section of ``run_dir/config.yaml``.
    """
    s = checked_settings(args)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        "max_ongoing_requests": max(64, 2 * s.target_ongoing_requests),
    }
    if s.num_replicas is not None:
        options["num_replicas"] = s.num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    logger.info("copl-ray serve: run_dir=%s model=%s", s.run_dir, s.model)
    return RewardServer.options(**options).bind(s.to_dict())
