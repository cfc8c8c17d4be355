"""HTTP schemas of the v1 API, validated by pydantic (violations -> 422 with the field path).

Limits (``serve.max_responses``, ``serve.max_chars``, ``serve.max_annotations``) are
read at validation time from :data:`LIMITS`, which each replica sets once from its
resolved ``ServeConfig`` (:func:`configure_limits`); a replica is one process, so the
module-level value is that replica's configuration. A violation names the offending
field, e.g. ``["body", "responses", 3]: text has 9001 characters; the limit is
serve.max_chars=8000``.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from copl_ray.config import Selector

if TYPE_CHECKING:
    from copl_ray.graph.users import UserEmbedding
    from copl_ray.serving.store import StoredUser

QUOTE_CHARS = 80  # the most of a client's input an error message quotes
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist = 2, 4, 4
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS


@dataclass
class Limits:
    max_responses: int = 16
    max_chars: int = 8000
    max_annotations: int = 64
    max_questions: int = 16


LIMITS = Limits()


def configure_limits(
    max_responses: int, max_chars: int, max_annotations: int, max_questions: int = 16
) -> None:
    LIMITS.max_responses = int(max_responses)
    LIMITS.max_chars = int(max_chars)
    LIMITS.max_annotations = int(max_annotations)
    LIMITS.max_questions = int(max_questions)


def _check_unicode(v: str) -> str:
    """JSON's ``\\ud800`` escapes decode to lone UTF-16 surrogates, which no tokenizer (and
    no UTF-8 encoder) accepts: refuse them here, naming the field, instead of a 500."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"not valid Unicode: lone UTF-16 surrogate at character {e.start}"
        ) from None
    return v


def _check_text(v: str) -> str:
    _check_unicode(v)
    if len(v) > LIMITS.max_chars:
        raise ValueError(
            f"text has {len(v)} characters; the limit is serve.max_chars={LIMITS.max_chars}"
        )
    return v


def _check_responses(v: list[str]) -> list[str]:
    if len(v) > LIMITS.max_responses:
        raise ValueError(
            f"{len(v)} responses; the limit is serve.max_responses={LIMITS.max_responses}"
        )
    return v


def _check_annotations(v: list) -> list:
    if len(v) > LIMITS.max_annotations:
        raise ValueError(
            f"{len(v)} annotations; the limit is serve.max_annotations={LIMITS.max_annotations}"
        )
    return v


def _check_questions(v: int) -> int:
    if v > LIMITS.max_questions:
        raise ValueError(f"{v} questions; the limit is serve.max_questions={LIMITS.max_questions}")
    return v


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("empty or blank text: a label needs the prompt and both responses")
    return v


Text = Annotated[str, AfterValidator(_check_text)]
LabelText = Annotated[Text, AfterValidator(_not_blank)]
UserId = Annotated[
    str, Field(min_length=1, max_length=128, examples=["u0001"]), AfterValidator(_check_unicode)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreRequest(_Strict):
    user_id: UserId
    prompt: Text
    responses: Annotated[list[Text], Field(min_length=1), AfterValidator(_check_responses)]


class ScoreResponse(BaseModel):
    user_id: str
    scores: list[float] = Field(description="f(user, prompt, response), one per response")
    model: str


class CompareRequest(_Strict):
    user_id: UserId
    prompt: Text
    a: Text
    b: Text


class CompareResponse(BaseModel):
    user_id: str
    p_a_over_b: float = Field(description="p(a ≻ b | user) = σ(f(a) − f(b))")
    score_a: float
    score_b: float
    model: str


class AnnotationIn(_Strict):
    prompt: LabelText
    chosen: LabelText = Field(description="the response the user preferred")
    rejected: LabelText

    @model_validator(mode="after")
    def _distinct(self) -> AnnotationIn:
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same text")
        return self


class AnnotationsRequest(_Strict):
    annotations: Annotated[
        list[AnnotationIn], Field(min_length=1), AfterValidator(_check_annotations)
    ]


class QuestionsRequest(_Strict):
    k: Annotated[
        int, Field(ge=1, description="how many questions"), AfterValidator(_check_questions)
    ] = 4
    selector: Selector | None = Field(
        default=None,
        description="copl (expected change of the adapted embedding), pref (PReF's "
        "D-optimal rule) or random; default serve.question_selector",
    )


class QuestionOut(BaseModel):
    pair_id: int
    prompt: str
    a: str
    b: str


class QuestionsResponse(BaseModel):
    user_id: str | None = Field(description="null for the opening questions of a new user")
    selector: str
    n_answered: int = Field(description="labels the selection conditioned on")
    questions: list[QuestionOut] = Field(
        description="best first; answer each through POST /v1/users (the first answers) or "
        "POST /v1/users/{user_id}/annotations, with the preferred text as chosen"
    )


N_UNKNOWN = (
    "labels (annotations) with at least one response that is no node of the run's graph — "
    "a text the run does not contain, or a response nobody labelled in training; a label "
    "counts once even when both its texts are unknown (the count offline adaptation makes)"
)


class UserCreated(BaseModel):
    user_id: str
    n_neighbors: int = Field(description="seen users reached by positive edges (k hops)")
    fallback: bool = Field(description="no neighbour was reached: the fallback embedding is used")
    n_annotations: int
    n_unknown: int = Field(description=N_UNKNOWN)
    version: int

    @classmethod
    def of(cls, stored: StoredUser) -> UserCreated:
        """The answer to a create / refine: the stored user's record and its store entry."""
        user = stored.user
        return cls(
            user_id=user.user_id,
            n_neighbors=user.n_neighbors,
            fallback=user.fallback,
            n_annotations=len(stored.annotations),
            n_unknown=user.n_unknown,
            version=stored.version,
        )


class UserInfo(BaseModel):
    user_id: str
    kind: str = Field(description="trained | adapted (offline, by the GNN stage) | created (API)")
    seen: bool
    n_neighbors: int
    fallback: bool
    n_annotations: int | None = None
    n_unknown: int | None = Field(default=None, description=f"created users: {N_UNKNOWN}")
    version: int | None = None
    created_at: float | None = None
    updated_at: float | None = None
    embedding_dim: int
    embedding: list[float] | None = None

    @classmethod
    def of(
        cls, user: UserEmbedding, stored: StoredUser | None, include_embedding: bool = False
    ) -> UserInfo:
        """What the server knows about ``user``; ``stored``: its store entry when it was
        created through the API (labels, version, timestamps), None for a run's user."""
        emb = user.embedding
        extra: dict[str, Any] = {}
        if stored is not None:
            extra = {
                "n_annotations": len(stored.annotations),
                "n_unknown": user.n_unknown,
                "version": stored.version,
                "created_at": stored.created_at,
                "updated_at": stored.updated_at,
            }
        return cls(
            user_id=user.user_id,
            kind=user.kind,
            seen=user.seen,
            n_neighbors=user.n_neighbors,
            fallback=user.fallback,
            embedding_dim=int(emb.shape[0]),
            embedding=[float(x) for x in emb] if include_embedding else None,
            **extra,
        )


def _quote_text(text: str, limit: int = QUOTE_CHARS) -> str:
    """At most ``limit`` characters of ``text``, lone surrogates escaped (UTF-8 safe)."""
    cut = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return cut if len(text) <= limit else f"{cut}… ({len(text)} characters)"


def quotable(value: Any) -> Any:
    """A stand-in for a client's value that any JSON encoder accepts and that stays short:
    finite numbers as they are, text capped and escaped, ``NaN``/``Infinity`` and
    containers as a capped ``repr`` (JSON has no NaN; FastAPI's default 422 renderer
    fails on one, and echoes a megabyte of input back as readily)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        return _quote_text(value)
    return _quote_text(_REPR.repr(value))


def quotable_errors(errors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI validation errors as a 422 body that always renders: ``loc``
    (whose keys come from the client), ``msg`` and ``input`` pass through :func:`quotable`;
    ``ctx`` (exception objects) is dropped — ``msg`` already says it."""
    out = []
    for e in errors:
        item = {
            "type": str(e.get("type", "value_error")),
            "loc": [quotable(x) for x in e.get("loc", ())],
            "msg": _quote_text(str(e.get("msg", "")), limit=400),
        }
        if "input" in e:
            item["input"] = quotable(e["input"])
        out.append(item)
    return out
