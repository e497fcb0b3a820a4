"""The built wheel alone runs the demo: `fhir-spine extract` and `fhir-spine report`.

The default mappings and the demo cohort are package data read with importlib.resources.
This test proves it the way a user meets it: the wheel is built from a copy of only
pyproject.toml, README.md and src/ (nothing else of the repository can slip in), installed
into a fresh virtualenv (its dependencies come from the pip cache or the package registry),
and its console script runs from a folder outside the repository with PYTHONPATH unset.
One test for both commands, because the install is the slow part (about a minute or two).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fhir_spine"
DATA_FOLDERS = ("mappings", "demo")

pytestmark = pytest.mark.wheel


def _clean_env(tmp_path: Path, venv: Path | None = None) -> dict[str, str]:
    """The caller's environment minus everything that could import the source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "PYTHONUSERBASE", "__PYVENV_LAUNCHER__")}
    env["PYTHONNOUSERSITE"] = "1"  # no ~/.local site-packages
    env["PYTHONSAFEPATH"] = "1"  # no cwd / script folder on sys.path
    env["MPLCONFIGDIR"] = str(tmp_path / "mplconfig")
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str],
         timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, (
        f"{argv} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
        f"\n--- stderr\n{done.stderr[-4000:]}")
    return done


def _data_files() -> dict[str, Path]:
    """Every package-data file of the source tree, by its name inside the wheel."""
    return {f"fhir_spine/{p.relative_to(PACKAGE).as_posix()}": p
            for folder in DATA_FOLDERS for p in sorted((PACKAGE / folder).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def _build_wheel(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "-q",
          "-w", dist, tree], cwd=tmp_path, env=_clean_env(tmp_path), timeout=600)
    wheels = list(dist.glob("fhir_spine-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_installs_and_runs_the_demo_extract_and_report(tmp_path):
    wheel = _build_wheel(tmp_path)
    data = _data_files()
    assert any(n.endswith(".ndjson.gz") for n in data)
    assert any(n.startswith("fhir_spine/mappings/views/") for n in data)
    with zipfile.ZipFile(wheel) as archive:
        missing = sorted(set(data) - set(archive.namelist()))
    assert not missing, f"package data not in the wheel: {missing}"

    venv = tmp_path / "venv"
    work = tmp_path / "work"  # the folder the user runs from: no source tree
    work.mkdir()
    assert ROOT not in work.resolve().parents
    _run([sys.executable, "-m", "venv", venv], cwd=work, env=_clean_env(tmp_path),
         timeout=300)
    env = _clean_env(tmp_path, venv)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-input", "-q", wheel], cwd=work, env=env,
         timeout=1800)

    where = json.loads(_run([python, "-c", (
        "import json, sysconfig, fhir_spine, fhir_spine.settings as s; print(json.dumps(["
        "fhir_spine.__file__, sysconfig.get_paths()['purelib'], str(s.DEFAULT_MAPPINGS), "
        "str(s.DEMO_COHORT)]))")], cwd=work, env=env, timeout=120).stdout)
    module, purelib, mappings, demo = (Path(p).resolve() for p in where)
    assert venv.resolve() in purelib.parents
    for path in (module, mappings, demo):
        assert purelib in path.parents, f"{path} is not from the installed wheel"
        assert ROOT not in path.parents

    out = work / "out"
    extract = _run([venv / "bin" / "fhir-spine", "--quiet", "extract", "--out", out],
                   cwd=work, env=env, timeout=600)
    assert "patients screened: 100, included: 65, excluded: 35" in extract.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert Path(manifest["source"]["location"]).resolve() == demo
    assert manifest["accounting"]["balanced"]
    recorded = {f["path"]: f["sha256"] for f in manifest["mapping_files"]}
    expected = {name: hashlib.sha256(path.read_bytes()).hexdigest()
                for name, path in data.items()
                if name.startswith("fhir_spine/mappings/")}
    assert recorded == expected

    report = _run([venv / "bin" / "fhir-spine", "--quiet", "report", out], cwd=work, env=env,
                  timeout=600)
    folder = out / "report"
    assert str(folder / "report.html") in report.stdout
    for name in ("report.html", "report.md", "manifest.json", "figures/flow.png",
                 "figures/figure3_time_to_therapy.svg", "figures/figure4_pros.png",
                 "tables/table1_baseline.csv", "tables/statistics.csv"):
        assert (folder / name).is_file(), name
        assert (folder / name).stat().st_size > 0, name
