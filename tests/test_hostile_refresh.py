"""A broken refresh state never publishes a partial dataset or a wrong exit (issue 15).

One full refresh of the demo cohort from `tests/faults/hostile.py` (mode `cohort`) on
127.0.0.1 is the template; each case copies it, breaks the state folder one way, runs
`fhir-spine refresh` again and checks: exit 9 with one error line, the published dataset
byte for byte as before.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from faults.hostile import HostileServer, all_output_bytes
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.faults.hostile import HostileServer, all_output_bytes


def refresh(server: HostileServer, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SPINE_")}
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "refresh",
                           "--server", server.base, "--out", str(out), "--timeout", "5",
                           "--retry-time", "0", *extra], capture_output=True, text=True,
                          env=env, timeout=180, check=False)


@pytest.fixture(scope="module")
def server():
    with HostileServer("cohort") as s:
        yield s


@pytest.fixture(scope="module")
def template(server, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refresh-template")
    proc = refresh(server, root / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture
def copy(template, tmp_path) -> Path:
    """A copy of the template's dataset and state folder: (tmp_path / 'out')."""
    for name in ("out", "out.state"):
        shutil.copytree(template / name, tmp_path / name, symlinks=True)
    return tmp_path / "out"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): b for p, b in all_output_bytes(folder)}


def assert_state_error(proc: subprocess.CompletedProcess[str], out: Path,
                       before: dict[str, bytes], words: str) -> None:
    assert proc.returncode == 9, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fhir-spine:")]
    assert len(errors) == 1 and errors[0].startswith("fhir-spine: error:"), proc.stderr
    assert words in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert snapshot(out) == before, "the published dataset changed"


def store(out: Path) -> Path:
    return out.with_name(out.name + ".state") / "store.sqlite"


def state_file(out: Path) -> Path:
    return out.with_name(out.name + ".state") / "state.json"


def test_an_unchanged_refresh_passes_every_check(server, copy):
    proc = refresh(server, copy)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_store_one_run_ahead_of_state_json_is_a_kill_after_commit(server, copy):
    state = json.loads(state_file(copy).read_text())
    state["run"] -= 1
    state_file(copy).write_text(json.dumps(state))
    proc = refresh(server, copy)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(("content", "words"), [
    ("[]", "holds list"), ("null", "holds NoneType"),
    ("WATERMARK", "is not an instant"), ("RUN", "`run` is"),
])
def test_state_json_of_the_wrong_shape_is_exit_9(content, words, server, copy):
    before = snapshot(copy)
    state = json.loads(state_file(copy).read_text())
    if content == "WATERMARK":
        content = json.dumps({**state, "watermark": "last tuesday"})
    elif content == "RUN":
        content = json.dumps({**state, "run": "7"})
    state_file(copy).write_text(content)
    assert_state_error(refresh(server, copy), copy, before, words)


@pytest.mark.parametrize(("breakage", "words"), [
    ("DELETE FROM resources", "rows were deleted"),
    ("DELETE FROM resources WHERE unit > 'p010'", "rows were deleted"),
    ("DROP TABLE units", "rows were deleted"),
    ("DROP TABLE meta", "no run record"),
    ("DELETE FROM meta", "no run record"),
])
def test_an_emptied_or_truncated_store_is_exit_9(breakage, words, server, copy):
    before = snapshot(copy)
    db = sqlite3.connect(store(copy))
    db.execute(breakage)
    db.commit()
    db.close()
    assert_state_error(refresh(server, copy), copy, before, words)


def test_a_deleted_store_is_exit_9(server, copy):
    before = snapshot(copy)
    for path in store(copy).parent.glob("store.sqlite*"):
        path.unlink()
    assert_state_error(refresh(server, copy), copy, before, "no run record")


def test_a_corrupt_page_is_exit_9_before_anything_is_published(server, copy):
    before = snapshot(copy)
    path = store(copy)
    size = path.stat().st_size
    assert size > 64 * 4096
    with path.open("r+b") as handle:  # garbage over a run of pages in the middle
        handle.seek((size // 2) // 4096 * 4096)
        handle.write(os.urandom(16 * 4096))
    started = time.monotonic()
    proc = refresh(server, copy)
    assert_state_error(proc, copy, before, "raw store")
    assert time.monotonic() - started < 120


def test_debug_keeps_an_internal_error_at_70(tmp_path):
    script = ("import sys\n"
              "from fhir_spine.cli import synth\n"
              "def boom(args):\n"
              "    raise RuntimeError('a bug')\n"
              "synth.run = boom\n"
              "from fhir_spine.cli.main import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    for extra in ([], ["--debug"]):
        proc = subprocess.run([sys.executable, "-c", script, *extra, "synth", "--patients",
                               "1", "--seed", "1", "--out", str(tmp_path / "s")],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 70, (extra, proc.stderr[-2000:])
        assert proc.stderr.rstrip().splitlines()[-1].startswith("fhir-spine: internal error:")


def test_full_rebuilds_a_damaged_store(server, copy, template):
    path = store(copy)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek((size // 2) // 4096 * 4096)
        handle.write(os.urandom(16 * 4096))
    proc = refresh(server, copy, "--full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "damaged" in proc.stderr
    expected = (template / "out" / "patients.csv").read_bytes()
    assert (copy / "patients.csv").read_bytes() == expected
    assert refresh(server, copy).returncode == 0  # and the next run goes on from it
