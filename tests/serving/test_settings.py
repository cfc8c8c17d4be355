"""The application builder refuses bad args and unusable folders with one line (issue 17
§5.12), through the real ``serve run`` CLI (a subprocess) and when called directly.

``serve run serve_app.app:build_app ...`` calls the builder before it starts Ray, so a
refused build must exit 2 with ``error: <field>: ...`` and start nothing. (``serve run
CONFIG`` builds in the Serve controller instead; Serve then logs the same one-line message
under "Deploying app 'copl' failed with exception:" and keeps running — its own behaviour.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from copl_ray.config import ConfigError
from copl_ray.serving.settings import ServeArgsError

REPO = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).parent / "serve")


def _serve_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [SERVE, "run", "--address", "local", "serve_app.app:build_app", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,  # a build that wrongly passes would start Ray and block
    )


def _one_line_refusal(p: subprocess.CompletedProcess, field: str) -> str:
    out = p.stdout + p.stderr
    assert p.returncode == 2, out[-2000:]
    assert "Traceback" not in out and "Started a local Ray" not in out, out[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {field}: "), out[-2000:]
    return errors[0]


def test_serve_run_bad_value_is_one_line_naming_the_field(tmp_path):
    line = _one_line_refusal(_serve_run(f"run_dir={tmp_path}", "max_chars=many"), "serve.max_chars")
    assert "many" in line


def test_serve_run_unknown_key_and_missing_run_dir(tmp_path):
    _one_line_refusal(_serve_run(f"run_dir={tmp_path}", "max_char=8"), "serve app args")
    _one_line_refusal(_serve_run(f"run_dir={tmp_path / 'nope'}"), "run_dir")
    # a directory that is not a finished run: names the missing artifact
    line = _one_line_refusal(_serve_run(f"run_dir={tmp_path}"), "run_dir")
    assert "reward_config.json" in line


def test_serve_run_store_folder_that_is_a_file(tiny_run, tmp_path):
    blocker = tmp_path / "users"
    blocker.write_text("not a folder")
    for users_dir in (blocker, blocker / "nested"):
        p = _serve_run(f"run_dir={tiny_run.root}", f"users_dir={users_dir}")
        line = _one_line_refusal(p, "serve.users_dir")
        assert f"{blocker} is a file" in line


def test_builder_probes_the_store_folder(tiny_run, tmp_path):
    from serve_app.app import build_app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"^serve\.users_dir: .* is a file"):
        build_app({"run_dir": str(tiny_run.root), "users_dir": str(blocker)})
    with pytest.raises(ServeArgsError, match=r"^serve\.max_chars: expected int"):
        build_app({"run_dir": str(tiny_run.root), "max_chars": "many"})
    ok = tmp_path / "users"
    build_app({"run_dir": str(tiny_run.root), "users_dir": str(ok)})
    assert ok.is_dir() and not list(ok.iterdir())  # the probe cleans up after itself


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through a read-only mode: nothing to refuse"
)
def test_builder_refuses_a_read_only_store_folder(tiny_run, tmp_path):
    from serve_app.app import build_app

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"^serve\.users_dir: .*not a writable folder"):
            build_app({"run_dir": str(tiny_run.root), "users_dir": str(ro)})
    finally:
        ro.chmod(0o700)
