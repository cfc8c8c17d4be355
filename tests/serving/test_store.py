"""The adapted-user store: atomic publish, cross-process visibility, locking, safe ids."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import numpy as np
import pytest

from copl_ray.config import ConfigError
from copl_ray.graph.users import CREATED, UserEmbedding
from copl_ray.serving.settings import resolve_settings
from copl_ray.serving.store import Annotation, StoredUser, UserStore, valid_user_id


def _user(user_id: str, value: float = 0.5, n: int = 1) -> StoredUser:
    anns = [Annotation("p", f"c{i}", f"r{i}", i, None) for i in range(n)]
    emb = np.linspace(-1, 1, 8, dtype=np.float32) * value
    rec = UserEmbedding(user_id, emb, kind=CREATED, n_neighbors=3, fallback_kind="", n_unknown=n)
    return StoredUser(rec, anns, 1.0, 1.0)


def test_roundtrip_is_exact_float32(tmp_path):
    store = UserStore(tmp_path)
    u = _user("new-abc", value=1 / 3)
    store.put(u)
    back = UserStore(tmp_path).get("new-abc")  # a fresh store = another replica
    assert back is not None
    assert back.user.embedding.dtype == np.float32
    np.testing.assert_array_equal(back.user.embedding, u.user.embedding)  # doubles hold f32
    assert back.user.to_dict() == u.user.to_dict()  # every field of the one user record
    assert back.annotations[0].chosen_id == 0 and back.annotations[0].rejected_id is None
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_a_document_from_before_the_record_reads_with_labels_counted(tmp_path):
    """Older servers stored no ``kind`` and counted unknown *texts*; such a user still
    reads, as a created user whose ``n_unknown`` counts labels like offline adaptation."""
    old = {
        "user_id": "new-old",
        "embedding": [0.25, -0.5],
        "n_neighbors": 2,
        "fallback": False,
        "n_unknown": 3,  # texts: both of label 0, the rejected one of label 1
        "annotations": [
            {"prompt": "p", "chosen": "x", "rejected": "y", "chosen_id": None, "rejected_id": None},
            {"prompt": "p", "chosen": "a", "rejected": "z", "chosen_id": 4, "rejected_id": None},
            {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_id": 4, "rejected_id": 5},
        ],
        "created_at": 1.0,
        "updated_at": 2.0,
        "version": 3,
    }
    (tmp_path / "new-old.json").write_text(json.dumps(old))
    got = UserStore(tmp_path).get("new-old")
    assert (got.user.kind, got.user.seen, got.user.n_unknown, got.version) == (CREATED, False, 2, 3)


def test_other_replica_sees_update_after_its_cache_was_filled(tmp_path):
    a, b = UserStore(tmp_path), UserStore(tmp_path)
    a.put(_user("new-x", 1.0, n=1))
    assert b.get("new-x").version == 1  # b caches version 1
    upd = _user("new-x", 2.0, n=3)
    upd.version = 2
    a.put(upd)
    got = b.get("new-x")
    assert got.version == 2 and len(got.annotations) == 3


def test_create_reserves_unique_ids_and_unpublished_is_invisible(tmp_path):
    store = UserStore(tmp_path)
    seen_during_make = []

    def make(uid):
        # while the document is being built, the reserved id reads as "not there"
        seen_during_make.append(UserStore(tmp_path).get(uid))
        return _user(uid)

    ids = {store.create(make).user_id for _ in range(20)}
    assert len(ids) == 20 and seen_during_make == [None] * 20
    assert store.count() == 20


def test_failed_create_leaves_no_reservation(tmp_path):
    store = UserStore(tmp_path)

    def boom(uid):
        raise RuntimeError("adaptation failed")

    with pytest.raises(RuntimeError):
        store.create(boom)
    assert store.count() == 0


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_unsafe_ids_are_rejected(tmp_path, bad):
    assert not valid_user_id(bad)
    assert UserStore(tmp_path).get(bad) is None


def _append_under_lock(folder: str, n: int) -> None:
    store = UserStore(folder)
    for i in range(n):
        with store.locked("new-shared"):
            u = store.get("new-shared")
            u.annotations.append(Annotation("p", f"c{os.getpid()}-{i}", "r"))
            u.version += 1
            store.put(u)


def test_lock_serialises_read_modify_write_across_processes(tmp_path):
    UserStore(tmp_path).put(_user("new-shared", n=0))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_under_lock, args=(str(tmp_path), 25)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    u = UserStore(tmp_path).get("new-shared")
    # without the lock, interleaved read-modify-writes lose appends (< 50)
    assert len(u.annotations) == 50 and u.version == 51


def test_settings_precedence_and_errors(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("serve:\n  max_responses: 7\n  max_chars: 100\n")
    monkeypatch.delenv("COPL_SERVE_TOKEN", raising=False)
    s = resolve_settings({"run_dir": str(tmp_path), "max_chars": "50", "num_replicas": "2"})
    assert (s.max_responses, s.max_chars, s.num_replicas) == (7, 50, 2)
    assert s.users_dir == str(tmp_path / "serve" / "users") and s.auth_token_sha256 is None
    monkeypatch.setenv("COPL_SERVE_TOKEN", "s3cret")
    s = resolve_settings({"run_dir": str(tmp_path)})
    assert s.auth_token_sha256 and "s3cret" not in repr(s) and "s3cret" not in str(s.to_dict())
    with pytest.raises(ConfigError, match="serve.max_chars"):
        resolve_settings({"run_dir": str(tmp_path), "max_chars": "many"})
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_settings({"run_dir": str(tmp_path), "max_char": 3})
    with pytest.raises(ConfigError, match="run_dir"):
        resolve_settings({"run_dir": str(tmp_path / "missing")})


def test_build_app_names_the_missing_artifact(tmp_path):
    from copl_ray.config import ConfigError
    from serve_app.app import build_app

    # a ConfigError (ServeArgsError): `serve run` prints it as one line, exit 2
    with pytest.raises(ConfigError, match=r"^run_dir: .*reward/copl/reward_config.json"):
        build_app({"run_dir": str(tmp_path)})
