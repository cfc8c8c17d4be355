"""copl_ray/fsutil.py: run directories behind a URI, mirrored through a local staging folder.

A ``file://`` URI is a real pyarrow filesystem, so push/pull run for real on a tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from copl_ray.fsutil import (
    RunDirError,
    exists,
    is_uri,
    pull,
    push,
    resolve,
    staging_dir,
    uri_join,
)


def test_is_uri_tells_schemes_from_paths() -> None:
    for uri in ("s3://bucket/runs/x", "gs://b/x", "hdfs://nn:8020/r", "file:///tmp/r"):
        assert is_uri(uri), uri
    for path in ("/tmp/r", "runs/tiny", "./s3://x", "C:/runs", Path("/tmp/r")):
        assert not is_uri(path), path


def test_resolve_file_uri_and_reject_unknown_scheme(tmp_path: Path) -> None:
    fs, path = resolve(f"file://{tmp_path}/run")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/run"
    with pytest.raises(RunDirError, match=r"run dir 'nosuch://b/x': pyarrow\.fs cannot open it"):
        resolve("nosuch://b/x")


def test_staging_dir_is_stable_per_uri(tmp_path: Path) -> None:
    a = staging_dir("s3://bucket/runs/tiny", base=tmp_path)
    assert a == staging_dir("s3://bucket/runs/tiny", base=tmp_path)  # resumable
    assert a.is_dir() and a.parent == tmp_path / "copl_ray_staging"
    assert a.name.startswith("tiny-") and len(a.name) == len("tiny-") + 12
    # same last component, other bucket: another folder
    assert staging_dir("s3://other/runs/tiny", base=tmp_path) != a
    # odd characters of the tail are replaced
    assert staging_dir("gs://b/my run:1", base=tmp_path).name.startswith("my_run_1-")


def test_staging_dir_env_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPL_STAGING_DIR", str(tmp_path))
    assert staging_dir("s3://b/r").parent == tmp_path / "copl_ray_staging"


def test_push_then_pull_mirrors_the_tree(tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "gnn").mkdir(parents=True)
    (local / "gnn" / "_SUCCESS").write_text('{"config_hash": "abc"}')
    (local / "report.json").write_text("{}")
    uri = f"file://{tmp_path}/remote/run"
    assert not exists(uri)
    push(local, uri)
    assert exists(uri)
    assert (tmp_path / "remote/run/gnn/_SUCCESS").read_text() == '{"config_hash": "abc"}'
    # a second push overwrites files of the same name
    (local / "report.json").write_text('{"v": 2}')
    push(local, uri)
    assert (tmp_path / "remote/run/report.json").read_text() == '{"v": 2}'

    fresh = tmp_path / "fresh"
    assert pull(uri, fresh) is True
    got = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert got == ["gnn/_SUCCESS", "report.json"]
    assert (fresh / "report.json").read_text() == '{"v": 2}'


def test_pull_of_missing_uri_and_of_a_file(tmp_path: Path) -> None:
    assert pull(f"file://{tmp_path}/nothing", tmp_path / "x") is False
    assert not (tmp_path / "x").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunDirError, match="exists but is not a directory"):
        pull(f"file://{tmp_path}/afile", tmp_path / "y")


def test_uri_join_trims_slashes() -> None:
    assert uri_join("s3://b/runs/", "/gnn/", "users") == "s3://b/runs/gnn/users"
    assert uri_join("file:///tmp/r") == "file:///tmp/r"
