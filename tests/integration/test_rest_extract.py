"""`extract --server` on real FHIR servers gives the same tables as the file source.

For each test server (HAPI FHIR JPA and sekmet-fhir, from tests/servers): load the demo
cohort with `fhir-spine load`, extract it with `--server` (cohort found by the
index-procedure code search), extract the same folder with the file source, and compare
the tables row for row. Only what must differ is ignored: `issues.origin` (file:line
versus request URL) and the manifest's source, times and query.

When the demo cohort (src/fhir_spine/demo) is not there yet (it is built in parallel),
the same generator's output (`fhir-spine synth`) stands in, so the test never silently
skips.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_spine.cli.main import main
from fhir_spine.settings import DEMO_COHORT

pytestmark = pytest.mark.integration

# Tables that must be equal, and the columns that may differ between sources.
TABLES = {"patients": (), "events": (), "observations": (), "codes": (), "issues": ("origin",)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    if (DEMO_COHORT / "Patient.ndjson").exists() or any(DEMO_COHORT.glob("*.ndjson*")):
        return DEMO_COHORT
    folder = tmp_path_factory.mktemp("synth") / "cohort"
    assert main(["--quiet", "synth", "--patients", "40", "--seed", "2025",
                 "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def file_out(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("files") / "out"
    assert main(["--quiet", "extract", "--source", str(cohort), "--out", str(out)]) in (0, 1)
    return out


def load_and_extract(base_url: str, cohort: Path, out: Path, capsys) -> str:
    assert main(["--quiet", "load", "--server", base_url, str(cohort)]) == 0
    loaded = capsys.readouterr().out
    assert "loaded" in loaded
    status = main(["--quiet", "extract", "--server", base_url, "--out", str(out),
                   "--batch-size", "25", "--page-size", "50"])
    assert status in (0, 1), capsys.readouterr().err
    return loaded


def table(folder: Path, name: str) -> pd.DataFrame:
    frame = pd.read_parquet(folder / f"{name}.parquet")
    frame = frame.drop(columns=[c for c in TABLES[name] if c in frame.columns])
    frame = frame.astype(str)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_server_extraction_equals_file_extraction(fhir_server, cohort, file_out,
                                                  tmp_path, capsys):
    out = tmp_path / "out"
    load_and_extract(fhir_server.base_url, cohort, out, capsys)

    wanted = set(table(file_out, "patients")["patient_id"])
    found = set(table(out, "patients")["patient_id"])
    assert wanted <= found, f"cohort search missed {sorted(wanted - found)}"
    # The server is shared with other tests of the session: patients they loaded with an
    # index procedure are rightly pulled too. Compare the cohort's rows; the aggregate
    # tables and counts only when nothing else is there.
    extra = found - wanted
    for name in TABLES:
        if extra and name in ("codes", "issues"):
            continue
        expected, got = table(file_out, name), table(out, name)
        if extra:
            got = got[got["patient_id"].isin(wanted)].reset_index(drop=True)
        assert list(got.columns) == list(expected.columns), name
        assert len(got) == len(expected), f"{name}: {len(got)} rows from the server, " \
            f"{len(expected)} from the files"
        pd.testing.assert_frame_equal(got, expected, obj=f"{fhir_server.kind} {name}")

    manifest = json.loads((out / "manifest.json").read_text())
    files_manifest = json.loads((file_out / "manifest.json").read_text())
    assert manifest["source"] == {"kind": "server", "location": fhir_server.base_url,
                                  "auth": "none"}
    assert manifest["fhir_version"].startswith("4.0")
    if not extra:
        assert manifest["resources_read"] == files_manifest["resources_read"]
        assert manifest["accounting"] == files_manifest["accounting"]
    query = manifest["query"]
    assert query["complete"] is True and query["windowed"] is False
    assert query["searches"][0]["purpose"] == "candidates"
    assert query["requests"]["requests"] >= len(query["searches"])
    assert query["duplicates_skipped"] == 0


def test_load_is_idempotent(fhir_server, cohort, capsys):
    assert main(["--quiet", "load", "--server", fhir_server.base_url, str(cohort)]) == 0
    first = capsys.readouterr().out
    assert main(["--quiet", "load", "--server", fhir_server.base_url, str(cohort)]) == 0
    second = capsys.readouterr().out
    assert "created" not in second.splitlines()[0], second
    assert first.splitlines()[1] == second.splitlines()[1]  # same counts per type


def test_check_passes(fhir_server, capsys):
    assert main(["--quiet", "check", "--server", fhir_server.base_url]) == 0
    out = capsys.readouterr().out
    assert "FHIR version  4.0" in out and "result        ok" in out


# ------------------------------------------------ SMART Backend Services, for real

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _public_jwk(key, kid: str) -> dict:
    import jwt

    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk["alg"] = "RS384"
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk["alg"] = "ES384"
    return {**jwk, "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def smart_keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    keys = {"spine-rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "spine-ec": ec.generate_private_key(ec.SECP384R1())}
    paths = {}
    for client_id, key in keys.items():
        path = folder / f"{client_id}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        paths[client_id] = path
    (folder / "jwks.json").write_text(json.dumps(
        {cid: {"keys": [_public_jwk(k, f"{cid}-1")]} for cid, k in keys.items()}))
    return paths


@pytest.fixture(scope="module")
def smart_server(smart_keys, tmp_path_factory):
    """A private sekmet-fhir on 127.0.0.1 that requires SMART Backend Services tokens,
    with the two test clients' public keys registered."""
    work = tmp_path_factory.mktemp("smart-sekmet")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    jwks = json.loads((smart_keys["spine-rsa"].parent / "jwks.json").read_text())
    settings = {
        "host": "127.0.0.1", "port": port, "base_url": base,
        "data_dir": str(work / "data"), "db_path": str(work / "data" / "sekmet.db"),
        "own_private_key_path": str(work / "data" / "keys" / "own.pem"),
        "log_inbound": False, "simulator": {"enabled": False},
        "validation": {"inbound": "warn"},
        "server_auth": {"types": ["smart"], "token_lifetime": 600, "enforce_scopes": True,
                        "smart_clients": [{"client_id": cid, "jwks": jwks[cid],
                                           "scopes": "system/*.*"} for cid in jwks]},
    }
    (work / "data").mkdir()
    (work / "settings.yaml").write_text(json.dumps(settings))  # JSON is YAML
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "sekmet.main:app_factory", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        cwd=work, env={**os.environ, "SEKMET_CONFIG": str(work / "settings.yaml")},
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/metadata", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("SMART sekmet did not start: "
                                   + (work / "server.log").read_text(errors="replace")[-2000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "cohort"
    assert main(["--quiet", "synth", "--patients", "12", "--seed", "11",
                 "--out", str(folder)]) == 0
    return folder


def test_without_credentials_the_smart_server_refuses_with_exit_6(smart_server, capsys,
                                                                  monkeypatch):
    for name in list(os.environ):
        if name.startswith("FHIR_SPINE_") and not name.endswith("_URL"):
            monkeypatch.delenv(name)
    assert main(["--quiet", "check", "--server", smart_server]) == 6
    err = capsys.readouterr().err
    assert "401" in err and "FHIR_SPINE_TOKEN" in err


@pytest.mark.parametrize("client_id", ["spine-rsa", "spine-ec"])
def test_smart_backend_services_pull_leaks_no_secret(smart_server, smart_keys, small_cohort,
                                                     client_id, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("FHIR_SPINE_CLIENT_ID", client_id)
    monkeypatch.setenv("FHIR_SPINE_PRIVATE_KEY_FILE", str(smart_keys[client_id]))
    scope = ["--scope", "system/*.read system/*.write"]
    assert main(["--quiet", "load", "--server", smart_server, str(small_cohort), *scope]) == 0
    out = tmp_path / "out"
    status = main(["--debug", "extract", "--server", smart_server, "--out", str(out), *scope])
    captured = capsys.readouterr()
    assert status in (0, 1), captured.err
    assert "patients screened: 12" in captured.out

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"kind": "server", "location": smart_server, "auth": "smart"}
    assert manifest["query"]["complete"] is True
    key_lines = [line for line in smart_keys[client_id].read_text().splitlines()
                 if "-----" not in line]
    written = "".join(p.read_text(errors="replace") for p in out.iterdir()
                      if p.suffix in (".json", ".csv"))
    for text in (captured.out, captured.err, written):
        assert "eyJ" not in text  # neither the client assertion nor the access token
        assert not any(line in text for line in key_lines)
    assert "got an access token" in captured.err  # the debug log did run
