"""Pseudonymised output: no original id survives anywhere, pseudonyms are keyed and stable,
date shifting keeps every interval, birth dates never appear, keys are handled safely.

The tables are de-identified the way `extract` and `refresh` publish them
(`dataset.deidentified`); the rules of the other columns are in tests/test_deid.py."""

from __future__ import annotations

import json
import re
from datetime import date, datetime

import pandas as pd
import pytest

from fhir_spine import pseudonymise as ps
from fhir_spine import schema
from fhir_spine.dataset import deidentified
from fhir_spine.deid import DeidOptions
from fhir_spine.errors import SpineError, UsageError
from fhir_spine.known_ids import MAX_TEXT
from fhir_spine.outputs import write_dataset
from fhir_spine.pipeline import extract
from fhir_spine.pseudonymise import ENV_VAR, load_key
from fhir_spine.settings import DEMO_COHORT, load_mappings
from fhir_spine.sources.files import RawResource, iter_folder
from fhir_spine.tables import Tables, build_tables

KEY = b"k" * 16 + b"0123456789abcdef-test-key-one"
OTHER_KEY = b"z" * 16 + b"0123456789abcdef-test-key-two"

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
ATC = "http://www.whocc.no/atc"

BIRTH_DATES = {"ALFA-patient-93d1": "1958-03-14", "bravo.patient.27": "1961-07",
               "Charlie-Pt-58e": "1949-11-02"}


def _ref(pid: str) -> dict[str, str]:
    return {"reference": f"Patient/{pid}"}


def _patient_resources(pid: str, day: int, *, ref_form: str = "relative") -> list[dict]:
    """One patient's pathway: biopsy, staged stabilization, pathology, therapy,
    measures, an encounter, a condition, plus some bad input."""
    subject = {"relative": f"Patient/{pid}",
               "absolute": f"https://fhir.example.org/r4/Patient/{pid}",
               "history": f"Patient/{pid}/_history/4"}[ref_form]
    sub = {"reference": subject}
    enc = f"{pid}-ENC-admission"
    d = f"2023-03-{day:02d}"
    lvl = {"system": SCT, "code": "82687006"}
    return [
        {"resourceType": "Encounter", "id": enc, "status": "finished", "subject": sub,
         "class": {"code": "IMP"}, "period": {"start": f"{d}T08:00:00+02:00",
                                               "end": f"2023-03-{day + 2:02d}T12:00:00+02:00"}},
        {"resourceType": "Procedure", "id": f"{pid}-biopsy-index", "status": "completed",
         "subject": sub, "encounter": {"reference": f"Encounter/{enc}"},
         "code": {"coding": [{"system": CPT, "code": "20225"}]}, "bodySite": [{"coding": [lvl]}],
         "performedDateTime": f"{d}T09:30:00+02:00"},
        {"resourceType": "Procedure", "id": f"{pid}-stabilization", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": CPT, "code": "22840"}]},
         "bodySite": [{"coding": [lvl]}],
         "performedPeriod": {"start": f"2023-03-{day + 5:02d}T10:00:00Z",
                             "end": f"2023-03-{day + 5:02d}T13:00:00Z"}},
        {"resourceType": "DiagnosticReport", "id": f"{pid}-path-report", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOINC, "code": "11529-5"}]},
         "conclusionCode": [{"coding": [{"system": ICD10, "code": "C79.51"}]}],
         "issued": f"2023-03-{day + 7:02d}T16:20:00+02:00"},
        {"resourceType": "Condition", "id": f"{pid}-lesion", "subject": sub,
         "code": {"coding": [{"system": ICD10, "code": "C50.9"}]},
         "bodySite": [{"coding": [lvl]}], "recordedDate": f"2023-02-{day:02d}"},
        {"resourceType": "MedicationRequest", "id": f"{pid}-chemo-order", "status": "active",
         "intent": "order", "subject": sub,
         "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "L01XC03"}]},
         "authoredOn": f"2023-04-{day:02d}T11:00:00+02:00"},
        {"resourceType": "MedicationRequest", "id": f"{pid}-unresolved-med", "status": "active",
         "intent": "order", "subject": sub,
         "medicationReference": {"reference": f"Medication/{pid}-missing-drug"},
         "authoredOn": f"2023-04-{day:02d}"},
        {"resourceType": "Observation", "id": f"{pid}-vas-baseline", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOINC, "code": "38214-3"}]},
         "valueInteger": 7, "effectiveDateTime": f"2023-03-{day - 2:02d}T10:00:00+02:00"},
        {"resourceType": "Observation", "id": f"{pid}-vas-dx", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOINC, "code": "38214-3"}]},
         "valueInteger": 4, "effectiveDateTime": f"2023-03-{day + 8:02d}"},
        {"resourceType": "Observation", "id": f"{pid}-sosgoq", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOCAL, "code": "sosgoq-total"}]},
         "valueQuantity": {"value": 55}, "effectiveDateTime": f"2023-03-{day - 1:02d}"},
        {"resourceType": "Observation", "id": f"{pid}-vas-out-of-range", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOINC, "code": "38214-3"}]},
         "valueInteger": 42, "effectiveDateTime": f"2023-03-{day:02d}"},
        {"resourceType": "Procedure", "id": f"{pid}-partial-date-rt", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": SCT, "code": "108290001"}]},
         "performedDateTime": "2023-05"},
        {"resourceType": "Procedure", "id": f"{pid}-impossible-date", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": CPT, "code": "22840"}]},
         "performedDateTime": "2023-02-30"},
        {"resourceType": "Procedure", "id": f"{pid}-unmapped", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": "http://site.example", "code": "Z9"}]},
         "performedString": f"see chart of {pid}"},
    ]


def _cohort_items() -> tuple[list[RawResource], set[str]]:
    """The test cohort as source items, and every id a resource carries in it."""
    items: list[RawResource] = []
    forms = ["relative", "absolute", "history"]
    for n, (pid, birth) in enumerate(BIRTH_DATES.items()):
        patient = {"resourceType": "Patient", "id": pid, "gender": "female",
                   "birthDate": birth}
        items.append(RawResource(patient, f"Patient-{pid}.json"))
        for i, r in enumerate(_patient_resources(pid, 5 + 6 * n, ref_form=forms[n])):
            items.append(RawResource(r, f"{r['resourceType']}.ndjson:{n * 100 + i + 1}"))
    # a duplicate (newer version wins), an orphan, a resource whose type is unsupported
    dup = dict(items[2].resource, meta={"lastUpdated": "2024-01-01T00:00:00Z"})
    items.append(RawResource(dup, "Procedure.ndjson:999"))
    items.append(RawResource({"resourceType": "Procedure", "id": "orphan-proc-x77",
                              "status": "completed", "subject": _ref("ghost-patient-4411"),
                              "code": {"coding": [{"system": CPT, "code": "20225"}]},
                              "performedDateTime": "2023-01-01"}, "Procedure.ndjson:1000"))
    items.append(RawResource({"resourceType": "Basic", "id": "basic-thing-5150"},
                             "Basic-basic-thing-5150.json"))
    ids = {i.resource["id"] for i in items}
    ids |= {"ghost-patient-4411"} | {f"{p}-missing-drug" for p in BIRTH_DATES}
    return items, ids


@pytest.fixture(scope="module")
def cohort():
    items, ids = _cohort_items()
    extraction = extract(items, load_mappings(None, {}), validation="warn")
    assert extraction.accounting.balanced
    return build_tables(extraction), ids


def _demo():
    assert (DEMO_COHORT / "ground-truth.csv").exists(), "the demo cohort is missing"
    items = list(iter_folder(DEMO_COHORT))
    ids = set()
    for item in items:
        if isinstance(item, RawResource) and item.resource.get("id"):
            ids.add(str(item.resource["id"]))
    extraction = extract(items, load_mappings(None, {}), validation="warn")
    return build_tables(extraction), ids


@pytest.fixture(scope="module", params=["built", "demo"])
def dataset(request, cohort):
    return cohort if request.param == "built" else _demo()


# ----------------------------------------------------------------------------- helpers
MAPPINGS = load_mappings(None, {})


def _published(tables: Tables, key: bytes = KEY, date_shift_days: int = 0,
               manifest: dict | None = None) -> tuple[Tables, dict, dict]:
    """What `--pseudonymise` publishes: tables, manifest, and the mapping back."""
    out, meta, back = deidentified(tables, manifest or {}, DeidOptions(key, date_shift_days),
                                   MAPPINGS)
    assert back is not None
    return out, meta, back


def _deid(tables: Tables, key: bytes = KEY, date_shift_days: int = 0) -> Tables:
    return _published(tables, key, date_shift_days)[0]


def _token_of(back: dict, original: str) -> str:
    """The provenance pseudonym the mapping back gives for `original`."""
    return next(t for t, o in back["origins"].items() if o == original)
_RUN = re.compile(r"[A-Za-z0-9.\-]+")


def _tokens(text: str) -> set[str]:
    """Every substring of `text` bounded like an id (by `-`, `.` or a non-id character)."""
    out: set[str] = set()
    for run in _RUN.finditer(text):
        s = run.group()
        bounds = sorted({0, len(s)} | {i for i, c in enumerate(s) if c in ".-"}
                        | {i + 1 for i, c in enumerate(s) if c in ".-"})
        for a_i, a in enumerate(bounds):
            for b in bounds[a_i + 1:]:
                out.add(s[a:b])
    return out


def _leaks(tables: Tables, ids: set[str]) -> list[str]:
    """Original ids found in any cell: as an id-bounded token, or (ids of 6+ characters)
    anywhere inside a value."""
    long_ids = [i for i in ids if len(i) >= 6]
    leaks = []
    for name, df in tables.items():
        for column in df.columns:
            values = [str(v) for v in df[column].dropna().unique()]
            text = "\n".join(values)
            found = (_tokens(text) & ids) | {i for i in long_ids if i in text}
            for original in sorted(found):
                example = next((v for v in values if original in v), "")
                leaks.append(f"{name}.{column}: {original!r} in {example!r}")
    return leaks


# ------------------------------------------------------------------------------- tests
def test_the_cohort_really_carries_ids_in_every_place_checked(cohort):
    """The leak test below means something only if the unprotected tables leak."""
    tables, ids = cohort
    where = {line.split(":")[0] for line in _leaks(tables, ids)}
    for place in ("patients.patient_id", "events.patient_id", "events.resource_id",
                  "events.encounter_id", "observations.resource_id", "issues.resource_id",
                  "issues.message", "issues.origin", "issues.patient_id"):
        assert place in where, place


def test_no_original_id_survives_in_any_table(dataset):
    tables, ids = dataset
    out = _deid(tables, KEY)
    assert not _leaks(out, ids), "\n".join(_leaks(out, ids)[:20])
    shifted = _deid(tables, KEY, date_shift_days=30)
    assert not _leaks(shifted, ids), "\n".join(_leaks(shifted, ids)[:20])


def test_no_original_id_key_or_birth_date_in_any_file_written(dataset, tmp_path):
    tables, ids = dataset
    manifest = {"source": {"kind": "files", "location": "/data/export"},
                "query": {"kind": "files", "not_found": {"Patient": sorted(ids)[:3]}},
                "accounting": {"read": 1}}
    out, manifest, _ = _published(tables, KEY, 30, manifest)
    write_dataset(out, manifest, tmp_path)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"patients.parquet", "patients.csv", "issues.csv", "manifest.json"} <= set(written)
    needles = {i for i in ids if len(i) >= 6} | {KEY, KEY.decode()}
    if ids & set(BIRTH_DATES):  # the built cohort
        needles |= set(BIRTH_DATES.values())
    for name, data in written.items():
        for needle in needles:
            raw = needle if isinstance(needle, bytes) else needle.encode()
            assert raw not in data, f"{needle!r} found in {name}"
    # short ids can occur in binary Parquet by chance: check them in the decoded CSVs
    for name, data in written.items():
        if name.endswith((".csv", ".json")):
            leaked = _tokens(data.decode()) & ids
            assert not leaked, f"{sorted(leaked)} in {name}"
    assert json.loads(written["manifest.json"])["pseudonymisation"]["key_id"]


def test_birth_dates_are_never_output_only_age(cohort):
    tables, _ = cohort
    out = _deid(tables, KEY)
    assert not [c for name, df in out.items() for c in df.columns if "birth" in c.lower()]
    text = " ".join(str(v) for _, df in out.items() for c in df.columns
                    for v in df[c].dropna().unique())
    for birth in BIRTH_DATES.values():
        assert birth not in text
    ages = out.patients.set_index("patient_id")["age_at_biopsy"].dropna()
    assert len(ages) >= 1 and (ages == tables.patients.set_index("patient_id")[
        "age_at_biopsy"].dropna().to_numpy()).all()
    # the partial birthDate was quoted in an issue message before; not after
    before = " ".join(tables.issues["message"].dropna())
    assert "1961-07" in before
    assert "[redacted]" in " ".join(out.issues["message"].dropna())


def test_same_key_same_pseudonyms_other_key_other_pseudonyms(cohort):
    tables, _ = cohort
    a, b, c = (_deid(tables, k) for k in (KEY, KEY, OTHER_KEY))
    for (name, x), (_, y), (_, z) in zip(a.items(), b.items(), c.items(), strict=True):
        pd.testing.assert_frame_equal(x, y, obj=name)
        for column in ("patient_id", "resource_id", "encounter_id"):
            if column in x.columns:
                left, right = x[column].dropna(), z[column].dropna()
                assert len(left) == len(right)
                assert not (left.to_numpy() == right.to_numpy()).any(), f"{name}.{column}"


def test_pseudonyms_keep_joins_and_have_a_type_prefix(cohort):
    tables, _ = cohort
    out = _deid(tables, KEY)
    assert out.patients["patient_id"].str.fullmatch(r"pat-[0-9a-f]{20}").all()
    for name, df in out.items():
        for column in ("patient_id", "resource_id", "encounter_id"):
            if column in df.columns:
                # one original -> one pseudonym, distinct originals -> distinct pseudonyms
                pairs = pd.DataFrame({"o": tables.__dict__[name][column],
                                      "p": df[column]}).dropna().drop_duplicates()
                assert pairs["o"].is_unique and pairs["p"].is_unique, f"{name}.{column}"
    ev = out.events
    assert set(ev["patient_id"]) <= set(out.patients["patient_id"])
    enc_rows = set(ev.loc[ev["resource_type"] == "Encounter", "resource_id"])
    assert set(ev["encounter_id"].dropna()) & enc_rows  # Encounter ids join to their rows
    assert ev.loc[ev["resource_type"] == "Procedure", "resource_id"].str.startswith(
        "proc-").all()
    # the missing patient of the orphan keeps the same pseudonym in column and message
    orphan = out.issues[out.issues["code"] == "missing-patient"].iloc[0]
    assert orphan["patient_id"] in orphan["message"]


def test_inputs_are_not_modified(cohort):
    tables, _ = cohort
    before = {name: df.copy() for name, df in tables.items()}
    _deid(tables, KEY, date_shift_days=100)
    for name, df in tables.items():
        pd.testing.assert_frame_equal(df, before[name])


def _as_dt(value):
    if value is None or (not isinstance(value, str | date) and pd.isna(value)):
        return None
    if isinstance(value, date):
        return value
    if "T" in value:
        return datetime.fromisoformat(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return date.fromisoformat(value)
    return value  # a partial date, as given


def test_date_shift_moves_each_patient_by_one_offset_and_keeps_every_interval(dataset):
    tables, _ = dataset
    n = 60
    out = _deid(tables, KEY, date_shift_days=n)
    plain = _deid(tables, KEY)
    offsets: dict[str, set[int]] = {}

    def collect(before: pd.DataFrame, after: pd.DataFrame, columns) -> None:
        for column in columns:
            for pid, x, y in zip(after["patient_id"], before[column], after[column],
                                 strict=True):
                x, y = _as_dt(x), _as_dt(y)
                if x is None:
                    assert y is None
                    continue
                if isinstance(x, str):  # partial: dropped, never left unshifted
                    assert y is None
                    continue
                assert type(x) is type(y)
                if isinstance(x, datetime):
                    assert x.utcoffset() == y.utcoffset() and x.time() == y.time()
                    delta = (y.date() - x.date()).days
                else:
                    delta = (y - x).days
                offsets.setdefault(pid, set()).add(delta)

    for name, columns in schema.TABLES.items():
        shifted = [c.name for c in columns if c.deid == "date-shift"]
        if shifted:
            collect(getattr(plain, name), getattr(out, name), shifted)
    assert offsets, "no dates to shift"
    assert all(len(v) == 1 for v in offsets.values()), offsets  # one offset per patient
    assert all(-n <= next(iter(v)) <= n for v in offsets.values())
    assert any(next(iter(v)) != 0 for v in offsets.values())
    # intervals in whole days, and the order of events, are unchanged
    for column in ("days_biopsy_to_therapy", "days_biopsy_to_stabilization",
                   "days_stabilization_to_therapy", "age_at_biopsy"):
        pd.testing.assert_series_equal(out.patients[column], plain.patients[column])
    for (name, x), (_, y) in zip(plain.items(), out.items(), strict=True):
        assert len(x) == len(y), name


def test_date_shift_keeps_hours_between_instants_exactly(cohort):
    tables, _ = cohort
    plain = _deid(tables, KEY)
    out = _deid(tables, KEY, date_shift_days=365)
    for pid, group in plain.events.groupby("patient_id"):
        after = out.events.loc[group.index]
        times = [(_as_dt(a), _as_dt(b)) for a, b in zip(group["start"], after["start"],
                                                           strict=True)]
        instants = [(a, b) for a, b in times if isinstance(a, datetime)]
        for (a1, b1), (a2, b2) in zip(instants, instants[1:], strict=False):
            assert b2 - b1 == a2 - a1, pid


def test_free_text_keeps_its_meaning(cohort):
    tables, _ = cohort
    out, _, back = _published(tables, KEY)
    codes = set(out.issues["code"])
    assert {"missing-patient", "unparseable-date", "partial-date", "duplicate-resource",
            "unresolved-medication"} <= codes
    msg = dict(zip(out.issues["code"], out.issues["message"], strict=False))
    assert re.fullmatch(r"Procedure/proc-[0-9a-f]{20} read twice; kept the version from "
                        r"src-[0-9a-f]{20}", msg["duplicate-resource"])
    assert "'[redacted]'" in msg["unresolved-medication"]
    # origins (file names carrying ids, positions) are provenance pseudonyms, mapped back
    # only in the state folder's mapping
    origins = set(out.issues["origin"].dropna())
    assert all(re.fullmatch(r"src-[0-9a-f]{20}", o) for o in origins)
    real = {back["origins"][o] for o in origins}
    assert real == set(tables.issues["origin"].dropna())


def test_pseudonym_collisions_are_never_silent(monkeypatch, cohort):
    tables, _ = cohort
    monkeypatch.setattr(ps, "HEX_CHARS", 1)  # 16 pseudonyms for dozens of ids
    with pytest.raises(SpineError, match="collision"):
        _deid(tables, KEY)


# ------------------------------------------------------------------------------- keys
def test_load_key_from_env_and_file(tmp_path):
    secret = "f" * 64
    assert load_key({ENV_VAR: secret}) == secret.encode()
    key_file = tmp_path / "key"
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    assert load_key({}, key_file) == secret.encode()
    assert load_key({ENV_VAR: "x" * 64}, key_file) == secret.encode()  # the file wins


@pytest.mark.parametrize("env,file_text,match", [
    ({}, None, "needs a key"),
    ({ENV_VAR: "   "}, None, "needs a key"),
    ({ENV_VAR: "short-secret-value"}, None, "18 bytes"),
    ({}, "tiny-secret-in-file\n", "19 bytes"),
    ({}, "\n", "empty"),
])
def test_load_key_refuses_missing_or_short_keys_in_one_line(tmp_path, env, file_text, match):
    key_file = None
    if file_text is not None:
        key_file = tmp_path / "key"
        key_file.write_text(file_text)
    with pytest.raises(UsageError, match=match) as info:
        load_key(env, key_file)
    message = str(info.value)
    assert "\n" not in message
    for secret in ("short-secret-value", "tiny-secret-in-file"):
        assert secret not in message


def test_load_key_unreadable_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read the pseudonym key file"):
        load_key({}, tmp_path / "absent")


def test_bad_key_or_shift_rejected_by_the_transformation(cohort):
    tables, _ = cohort
    with pytest.raises(UsageError):
        _deid(tables, b"short")
    with pytest.raises(UsageError):
        _deid(tables, KEY, date_shift_days=-3)
    with pytest.raises(UsageError):
        _deid(tables, KEY, date_shift_days=ps.MAX_DATE_SHIFT_DAYS + 1)


def _tables(patients=(), events=(), issues=()) -> Tables:
    from fhir_spine import schema
    from fhir_spine.tables import frame

    return Tables(frame(list(patients), schema.PATIENTS), frame(list(events), schema.EVENTS),
                  frame([], schema.OBSERVATIONS), frame(list(issues), schema.ISSUES),
                  frame([], schema.CODES))


def test_free_text_with_numeric_word_type_name_and_odd_ids():
    """Ids that look like numbers, words or type names (the official examples have
    them): replaced where they are ids, left alone where they are text or positions."""
    def issue(rtype, rid, message, origin, pid=None):
        return {"severity": "info", "code": "c", "resource_type": rtype, "resource_id": rid,
                "patient_id": pid, "message": message, "origin": origin, "set_aside": True}

    tables = _tables(
        patients=[{"patient_id": "12", "included": False}],
        events=[{"patient_id": "12", "event_type": "encounter", "resource_type": "Encounter",
                 "resource_id": "biopsy", "used": False, "note": "no index biopsy"}],
        issues=[
            issue("Procedure", "biopsy", "Procedure/biopsy read twice; kept the version "
                  "from Procedure-biopsy.json", "Procedure.ndjson:12", "12"),
            issue("CodeSystem", "CodeSystem", "CodeSystem is not used by the pathway",
                  "Bundle-12.json#entry[12]"),
            issue("Observation", "o.1", "vas value 12 is out of range",
                  "https://h.example/fhir/Observation/o.1/_history/2", "12"),
            issue("Procedure", "px", "refers to Patient '12', which is not in the source",
                  "Procedure.ndjson:3", "12"),
            issue("Basic", "x y", "Basic x y is odd", "Basic-x y.json"),
        ])
    out, _, back = _published(tables, KEY)
    pat = ps.pseudonym(KEY, "Patient", "12")
    proc = ps.pseudonym(KEY, "Procedure", "biopsy")
    obs = ps.pseudonym(KEY, "Observation", "o.1")
    basic = ps.pseudonym(KEY, "Basic", "x y")
    assert out.events.loc[0, "note"] == "no index biopsy"
    messages, origins = out.issues["message"].tolist(), out.issues["origin"].tolist()
    assert messages == [
        f"Procedure/{proc} read twice; kept the version from "
        f"{_token_of(back, 'Procedure-biopsy.json')}",
        "CodeSystem is not used by the pathway",
        "vas value 12 is out of range",
        f"refers to Patient '{pat}', which is not in the source",
        f"Basic {basic} is odd",
    ]
    real = ["Procedure.ndjson:12", "Bundle-12.json#entry[12]",
            "https://h.example/fhir/Observation/o.1/_history/2", "Procedure.ndjson:3",
            "Basic-x y.json"]
    assert origins == [_token_of(back, o) for o in real]
    assert out.issues["resource_id"].tolist()[2] == obs


def test_huge_free_text_is_cut_before_scrubbing():
    text = "performedString '" + "x-" * 500_000 + "' is not a date"
    tables = _tables(issues=[{"severity": "warning", "code": "unparseable-date",
                              "resource_type": "Procedure", "resource_id": "x",
                              "message": text, "origin": "a.ndjson:1", "set_aside": False}])
    out = _deid(tables, KEY)
    message = out.issues.loc[0, "message"]
    assert len(message) <= MAX_TEXT + 20 and message.endswith("[truncated]")


def test_manifest_loses_ids_but_keeps_versions_times_and_counts():
    tables = _tables(patients=[{"patient_id": "12", "included": False}],
                     issues=[{"severity": "info", "code": "c", "resource_type": "Observation",
                              "resource_id": "1", "message": "m", "set_aside": True}])
    url = "https://h.example/fhir/Patient?_id=12&_count=50"
    manifest = {"query": {"kind": "rest", "not_found": {"Patient": ["12", "Patient/12"]},
                          "searches": [{"resource_type": "Patient", "params": [["_id", "12"]],
                                        "url": url}],
                          "_id": "12", "url": url},
                "started": "2024-01-01T00:00:00+00:00", "fhir_version": "4.0.1",
                "accounting": {"read": 12}}
    _, out, back = _published(tables, KEY, 7, manifest)
    pat = ps.pseudonym(KEY, "Patient", "12")
    assert out["query"]["not_found"] == {"Patient": [pat, f"Patient/{pat}"]}
    search = out["query"]["searches"][0]
    assert search["params"] == [["_id", pat]]
    assert back["origins"][search["url"]] == url  # a URL is provenance, mapped back
    assert "_id" not in out["query"] and "url" not in out["query"]  # fields with no rule
    assert out["started"] == manifest["started"] and out["fhir_version"] == "4.0.1"
    assert out["accounting"] == {"read": 12}
    block = out["pseudonymisation"]
    assert block["key_id"] == ps.key_id(KEY) != ps.key_id(OTHER_KEY)
    assert block["date_shift_days"] == 7 and KEY.decode() not in json.dumps(out)
    assert url not in json.dumps(out)
