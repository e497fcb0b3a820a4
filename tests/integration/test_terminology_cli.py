"""`--terminology URL` against the real HAPI test server, and the project's ValueSets
(profiles/valuesets/) as FHIR R4 resources on it.

The SNOMED CT fragment of test_hapi_terminology.py is stored with one more child of
128462008 that concepts.yaml does not list. A Condition coded with that child is the
secondary malignancy with `--terminology` and an unmapped code without it (both asserted, in
codes.csv). With the expansion cap at 1, HAPI refuses the expansion and the codes it would
have listed are decided one by one with `CodeSystem/$subsumes`. The fragment is put back as
it was afterwards.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from fhir_spine import valuesets

from .test_hapi_terminology import CODE_SYSTEM, HEADERS, SCT, TIMEOUT, _put

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHILD = "999000001"  # test-only code: a child of 128462008 in the fragment, not in concepts.yaml
UNRELATED = "999000002"  # test-only root concept of the fragment, outside 128462008
NOT_IN_SERVER = "999999999"  # in no CodeSystem on the server
BONE_METASTASIS = "94222008"  # listed under secondary-malignancy in concepts.yaml
PYTHON = os.environ.get("FHIR_SPINE_PYTHON", sys.executable)


def _fhir_spine(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([PYTHON, "-m", "fhir_spine.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def fragment(hapi_server):
    base = hapi_server.base_url
    extended = copy.deepcopy(CODE_SYSTEM)
    extended["concept"][0]["concept"].append(
        {"code": CHILD, "display": "Test-only secondary malignant neoplasm (fhir-spine)"})
    extended["concept"].append({"code": UNRELATED, "display": "Test-only unrelated (fhir-spine)"})
    # tumour-other's `is-a 363346000` is expanded too: the code exists, without children here
    extended["concept"].append({"code": "363346000", "display": "Malignant neoplastic disease"})
    _put(base, extended)
    yield base
    _put(base, CODE_SYSTEM)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "source"
    src.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female",
               "birthDate": "1960-01-01"}
    condition = {
        "resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": SCT, "code": CHILD,
                             "display": "Test-only secondary malignant neoplasm"}]},
        "onsetDateTime": "2023-03-01",
    }
    (src / "data.ndjson").write_text("\n".join(json.dumps(r) for r in (patient, condition))
                                     + "\n", encoding="utf-8")
    return src


def _condition(n: int, code: str) -> dict:
    return {"resourceType": "Condition", "id": f"c{n}", "subject": {"reference": f"Patient/p{n}"},
            "code": {"coding": [{"system": SCT, "code": code}]}, "onsetDateTime": "2023-03-01"}


def _per_code_source(tmp_path: Path) -> Path:
    """Three files (so `--jobs 2` reads them in two processes), each code twice or more."""
    src = tmp_path / "per-code"
    src.mkdir()
    codes = [CHILD, UNRELATED, NOT_IN_SERVER, BONE_METASTASIS, CHILD, UNRELATED]
    for f in range(3):
        lines = []
        for n in range(f * 2, f * 2 + 2):
            lines.append({"resourceType": "Patient", "id": f"p{n}", "gender": "male",
                          "birthDate": "1955-05-05"})
            lines.append(_condition(n, codes[n]))
        (src / f"part{f}.ndjson").write_text(
            "\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    return src


def _tables(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.json"}


def test_incomplete_expansion_decides_codes_with_subsumes(fragment, tmp_path):
    src = _per_code_source(tmp_path)
    metas = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        run = _fhir_spine("--quiet", "extract", "--source", str(src), "--out", str(out),
                          "--terminology", fragment, "--terminology-max-expansion", "1",
                          "--jobs", jobs)
        assert run.returncode == 0, run.stderr
        metas[jobs] = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    one, two = tmp_path / "jobs1", tmp_path / "jobs2"
    assert _concept_of(one, CHILD) == "secondary-malignancy"  # decided by $subsumes
    assert _concept_of(one, UNRELATED) == ""
    assert _concept_of(one, NOT_IN_SERVER) == ""
    assert _concept_of(one, BONE_METASTASIS) == "secondary-malignancy"  # listed: not asked
    term = metas["1"]["terminology"]
    expansion, catch_all = term["expansions"]
    # tumour-other's is-a 363346000 has no children on this server: complete within the cap
    assert (expansion["concept"], catch_all["concept"]) == ("secondary-malignancy",
                                                             "tumour-other")
    assert catch_all["incomplete"] is None, catch_all
    # HAPI refuses an expansion larger than `count`: "HAPI-0831 ... too many codes (maximum 1)"
    assert expansion["incomplete"].startswith("refused: 500 ") and "maximum 1" in \
        expansion["incomplete"], expansion
    assert expansion["codes"] == expansion["added"] == 0 and term["max_expansion"] == 1
    # one question per distinct code not known to the map, however often it is met
    assert (term["codes_decided"], term["codes_member"], term["codes_not_member"]) == (3, 1, 2)
    assert term["codes_unknown"] == 1 and term["codes_failed"] == 0  # HAPI: 400 Unknown code
    assert term["requests"] == 3 and term["operations"] == {"$subsumes": 3}
    assert metas["1"]["settings"]["terminology_max_expansion"] == 1
    assert metas["2"]["terminology"] == term
    assert _tables(one) == _tables(two)  # byte for byte, whatever --jobs is


def _concept_of(out: Path, code: str) -> str:
    with (out / "codes.csv").open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["code"] == code]
    assert rows, f"{code} not in codes.csv"
    return rows[0]["concept"]


def test_descendant_maps_only_with_terminology(fragment, tmp_path):
    src = _source(tmp_path)
    offline = _fhir_spine("--quiet", "extract", "--source", str(src),
                          "--out", str(tmp_path / "offline"))
    assert offline.returncode == 0, offline.stderr
    assert _concept_of(tmp_path / "offline", CHILD) == ""  # unmapped without the server

    online = _fhir_spine("--quiet", "extract", "--source", str(src),
                         "--out", str(tmp_path / "online"), "--terminology", fragment)
    assert online.returncode == 0, online.stderr
    assert _concept_of(tmp_path / "online", CHILD) == "secondary-malignancy"
    meta = json.loads((tmp_path / "online" / "manifest.json").read_text(encoding="utf-8"))
    term = meta["terminology"]
    assert term["server"] == fragment and term["used"] is True
    [expansion] = [e for e in term["expansions"] if e["concept"] == "secondary-malignancy"]
    [other] = [e for e in term["expansions"] if e["concept"] == "tumour-other"]
    assert (other["is-a"], other["added"]) == ("363346000", 0)
    assert expansion["concept"] == "secondary-malignancy" and expansion["is-a"] == "128462008"
    assert expansion["codes"] == 4  # the parent, bone, brain and the test-only child
    assert expansion["added"] == term["codes_added"] == 1  # bone and brain are listed offline
    assert meta["settings"]["terminology"] == fragment


def test_server_down_is_one_line_or_a_warning(tmp_path):
    src = _source(tmp_path)
    down = "http://127.0.0.1:9/fhir"  # discard port: nothing listens
    failed = _fhir_spine("--quiet", "extract", "--source", str(src),
                         "--out", str(tmp_path / "x"), "--terminology", down)
    assert failed.returncode == 4, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "terminology server" in lines[0] and down in lines[0], lines

    optional = _fhir_spine("--quiet", "extract", "--source", str(src), "--out",
                           str(tmp_path / "y"), "--terminology", down, "--terminology-optional")
    assert optional.returncode == 0, optional.stderr
    assert "offline expansions" in optional.stderr
    meta = json.loads((tmp_path / "y" / "manifest.json").read_text(encoding="utf-8"))
    assert meta["terminology"]["used"] is False
    assert any("offline expansions" in w for w in meta["warnings"])
    assert _concept_of(tmp_path / "y", CHILD) == ""


def test_project_value_sets_are_valid_fhir_r4_on_hapi(fragment):
    """Every ValueSet of profiles/valuesets/ is stored by HAPI and read back unchanged: HAPI's
    R4 parser kept every element (an unknown element or a wrong type would be dropped or
    refused). HAPI's own `$validate` is no use here: this launcher has no StructureDefinitions
    loaded, so it answers "unknown resource name" for any resource, a Patient included (the
    unit test test_valuesets.py validates the same files with the fhir.resources models)."""
    sets = valuesets.load(ROOT / "profiles" / "valuesets")
    assert len(sets) > 50
    for vs in sets:
        _put(fragment, vs)
        r = requests.get(f"{fragment}/ValueSet/{vs['id']}", headers=HEADERS, timeout=TIMEOUT)
        assert r.status_code == 200, r.text[:2000]
        stored = {k: v for k, v in r.json().items() if k not in ("meta", "text")}
        assert stored == vs, vs["id"]
    url = valuesets.value_set_url("secondary-malignancy")
    r = requests.get(f"{fragment}/ValueSet", params={"url": url}, headers=HEADERS,
                     timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:2000]
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [
        "spine-secondary-malignancy"]
