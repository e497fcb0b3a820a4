"""Pseudonymised output: keyed pseudonyms for ids, optional per-patient date shifting.

A pure transformation of the contract's `Tables` (and of a manifest), applied after the
pathway ran on the real data, so every rule sees the true dates and ids and only the
published dataset is pseudonymised.

Pseudonyms
    `<prefix>-<hex>`: the first `HEX_CHARS` (20) hex digits of
    HMAC-SHA256(key, "fhir-spine/pseudonym/v1" NUL resource type NUL id). The prefix names
    the type (`pat` Patient, `enc` Encounter, `proc` Procedure, ...; `res` otherwise), and
    the type is inside the HMAC too, so Patient/1 and Observation/1 get unrelated
    pseudonyms. The same key gives the same pseudonyms on every run (datasets of nightly
    runs can be joined); another key gives unrelated ones. Without the key a pseudonym
    cannot be reversed or recomputed from a guessed id.

    Collision odds: 20 hex digits are 80 bits. Among n distinct ids of one type the
    chance that any two share a pseudonym is about n^2 / 2^81: 4e-13 for a million ids,
    4e-9 for a hundred million. A collision is still never silent: it raises.

Date shifting (`date_shift_days = N > 0`)
    Each patient gets one offset in [-N, N] days, derived from HMAC(key, patient id), and
    every date and instant of that patient in every table moves by exactly that many
    days (wall clock and UTC offset kept), so every interval, in days or in hours, is
    unchanged, as is the order of events. Partial dates (`2023-04`) cannot be moved
    exactly and are dropped. Ages are computed before, from the true dates.

Birth dates are never in the tables (`patients.age_at_biopsy` only); free text could
still carry one (an issue about an unparseable birthDate quotes it), so free text is
scrubbed:

Free text (`events.note`, `issues.message`, `issues.origin`, strings of the manifest)
    original ids (every value of an id column) are replaced by their pseudonyms: in
    file names and URLs (`Patient-<id>.json`, `.../Procedure/<id>`) and in reference
    form (`Procedure/<id>`) always; bare in running text only when they cannot be
    ordinary text (a number, a lower-case word or a resource type name there is a
    position, a value or a word of the message). Positions (`:12`, `#entry[3]`) are
    kept. In notes and messages every quoted literal (the raw input values messages
    quote: references, dates, free text) becomes the pseudonym when it is an id and
    `'[redacted]'` otherwise, and every date-like text becomes `[date]`. Free text is
    cut to `MAX_TEXT` characters first.

De-identified datasets (`Deidentifier`, what `--pseudonymise` publishes)
    The functions above pseudonymise ids and dates. A published dataset goes further:
    every column, manifest field and codebook column declares a rule in `schema.py`
    (`schema.DEID_RULES`), and `Deidentifier` applies exactly those, for `extract` and
    `refresh` alike (through `dataset.deidentified`). Provenance (paths, file names,
    URLs with their queries, positions) becomes keyed `src-<hex>` pseudonyms; source
    displays become the mappings' standard text or are dropped; local codes and systems
    the mappings do not name become keyed pseudonyms; server text is withheld. The
    mapping back (`origin_map`) is for the state folder, never the dataset.
    `LogScrubber` does the same for log and error lines unless `--debug`.

The key comes from `FHIR_SPINE_PSEUDONYM_KEY` or a key file, is required, must be at
least `MIN_KEY_BYTES` bytes, and is never written or logged by this module (the
manifest gets only `key_id`, an HMAC of a constant, to tell whether two datasets were
made with the same key). Make one with
`python -c "import secrets; print(secrets.token_hex(32))"`.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import logging
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from fhir_spine.errors import ExitCode, SpineError, UsageError
from fhir_spine.tables import Tables

log = logging.getLogger(__name__)

ENV_VAR = "FHIR_SPINE_PSEUDONYM_KEY"
MIN_KEY_BYTES = 32
HEX_CHARS = 20
MAX_DATE_SHIFT_DAYS = 36500
MAX_TEXT = 2000  # free text is cut to this many characters before it is scrubbed
REDACTED = "[redacted]"
DATE_MARK = "[date]"

PREFIXES = {
    "Patient": "pat", "Encounter": "enc", "Procedure": "proc", "Observation": "obs",
    "DiagnosticReport": "dr", "Condition": "cond", "MedicationRequest": "mreq",
    "MedicationAdministration": "madm", "Medication": "med",
}
DEFAULT_PREFIX = "res"

_PSEUDONYM_DOMAIN = b"fhir-spine/pseudonym/v1"
_SHIFT_DOMAIN = b"fhir-spine/date-shift/v1"
_KEY_ID_DOMAIN = b"fhir-spine/key-id/v1"

# FHIR ids are [A-Za-z0-9-.]{1,64}; such ids are found in free text by runs of those
# characters, any other (invalid) id by plain substring search.
_ID_CHARS = re.compile(r"[A-Za-z0-9.\-]+")
_VALID_ID = re.compile(r"[A-Za-z0-9.\-]{1,64}")
_MAX_ID = 64
_PSEUDONYM_TEXT = (r"(?:" + "|".join(sorted(set(PREFIXES.values()) | {DEFAULT_PREFIX}))
                   + r")-[0-9a-f]{" + str(HEX_CHARS) + r"}")
_KEEPABLE_LITERAL = re.compile(r"(?:[A-Za-z]+/)?" + _PSEUDONYM_TEXT
                               + r"|\[redacted\]|\(none\)")
_PSEUDONYM_RUN = re.compile(_PSEUDONYM_TEXT)
_REFERENCE_BEFORE = re.compile(r"\b[A-Z][A-Za-z]+/\Z")
_LOWER_WORD = re.compile(r"[a-z]+")
_LOCATION = re.compile(r"(?::[0-9]+|#entry\[[0-9]+\])+\Z")
_PATHLIKE = re.compile(r"https?://[^\s'\"]+|[^\s'\"]+\.(?:ndjson|jsonl|json)(?:\.gz)?"
                       r"(?:(?::[0-9]+|#entry\[[0-9]+\])+)?")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_DATE_LIKE = re.compile(
    r"(?<![0-9])[0-9]{4}-[0-9]{1,2}(?:-[0-9]{1,2})?"
    r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
    r"(?![0-9])")
# classify.py writes partial dates unquoted: "date 2023 is not a calendar day"
_NOT_A_DAY = re.compile(r"(?<=\bdate )(?!\(none\))\S+(?= is not a calendar day)")
_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

PATIENT_DATE_COLUMNS = ("index_biopsy_date", "stabilization_date",
                        "diagnosis_available_date", "therapy_start_date")


# ---------------------------------------------------------------------------- the key
def load_key(env: Mapping[str, str], key_file: Path | None = None) -> bytes:
    """The pseudonymisation key: the contents of `key_file` if given, else `$ENV_VAR`.

    Surrounding whitespace (a trailing newline) is stripped. Raises `UsageError` (one
    line, never showing the key) when there is no key or it is shorter than
    `MIN_KEY_BYTES` bytes.
    """
    if key_file is not None:
        try:
            raw = Path(key_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the pseudonym key file {key_file}: "
                             f"{exc.strerror or type(exc).__name__}") from None
        where = f"pseudonym key file {key_file}"
        try:
            mode = Path(key_file).stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("%s is readable by other users; chmod 600 it", where)
        except OSError:
            pass
    else:
        value = env.get(ENV_VAR)
        if value is None or not value.strip():
            raise UsageError(f"pseudonymisation needs a key: set {ENV_VAR} or pass "
                             "--pseudonym-key-file FILE (at least "
                             f"{MIN_KEY_BYTES} bytes, e.g. 64 hex digits)")
        raw = value.encode("utf-8")
        where = f"${ENV_VAR}"
    key = raw.strip()
    if not key:
        raise UsageError(f"{where} is empty; the pseudonym key must have at least "
                         f"{MIN_KEY_BYTES} bytes")
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"{where} holds a key of {len(key)} bytes; at least "
                         f"{MIN_KEY_BYTES} are required (e.g. 64 hex digits)")
    return key


def key_id(key: bytes) -> str:
    """A short fingerprint to tell whether two datasets used the same key."""
    return hmac.new(key, _KEY_ID_DOMAIN, hashlib.sha256).hexdigest()[:12]


# ----------------------------------------------------------------- pseudonyms, shifts
def _digest(key: bytes, *parts: str) -> bytes:
    message = b"\x00".join(p.encode("utf-8", "surrogatepass") for p in parts)
    return hmac.new(key, message, hashlib.sha256).digest()


def pseudonym(key: bytes, resource_type: str, original: str) -> str:
    """`<prefix>-<hex>` for the id `original` of `resource_type`."""
    digest = _digest(key, _PSEUDONYM_DOMAIN.decode(), resource_type or "", original)
    return f"{PREFIXES.get(resource_type, DEFAULT_PREFIX)}-{digest.hex()[:HEX_CHARS]}"


def date_shift(key: bytes, patient_id: str, max_days: int) -> int:
    """The patient's offset in days, in [-max_days, max_days] (0 when max_days is 0)."""
    if max_days <= 0:
        return 0
    digest = _digest(key, _SHIFT_DOMAIN.decode(), patient_id)
    return int.from_bytes(digest[:8], "big") % (2 * max_days + 1) - max_days


def shift_text(value: Any, days: int) -> str | None:
    """Move an ISO date or instant (as the tables write them) by `days`; None if partial
    or not a date (it cannot be moved exactly, and must not stay unmoved)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value)
    if days == 0:
        return text
    try:
        if "T" in text:
            return (datetime.fromisoformat(text) + timedelta(days=days)).isoformat()
        if _FULL_DATE.fullmatch(text):
            return (date.fromisoformat(text) + timedelta(days=days)).isoformat()
    except (ValueError, OverflowError):
        return None
    return None


def shift_date(value: Any, days: int) -> date | None:
    if value is None or (not isinstance(value, date) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        value = value.date()
    elif not isinstance(value, date):
        value = date.fromisoformat(str(value)[:10])
    try:
        return value + timedelta(days=days)
    except OverflowError:
        return None


# ------------------------------------------------------------------ the transformation
@dataclass
class _Context:
    resource_type: str = ""
    resource_id: str = ""
    patient_id: str = ""
    encounter_id: str = ""


@dataclass
class Pseudonymiser:
    """Pseudonyms and free-text scrubbing for one dataset (the ids it holds)."""

    key: bytes
    date_shift_days: int = 0
    types_of: dict[str, list[str]] = field(default_factory=dict)  # id -> its types
    odd_ids: list[str] = field(default_factory=list)             # ids not FHIR-shaped
    type_names: set[str] = field(default_factory=lambda: set(PREFIXES))
    _seen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes | bytearray) or len(self.key) < MIN_KEY_BYTES:
            raise UsageError(f"the pseudonym key must have at least {MIN_KEY_BYTES} bytes")
        if not 0 <= int(self.date_shift_days) <= MAX_DATE_SHIFT_DAYS:
            raise UsageError(f"--date-shift-days must be between 0 and {MAX_DATE_SHIFT_DAYS}")
        self.key = bytes(self.key)
        self._pseudo = lru_cache(maxsize=None)(self._compute)
        self._shift = lru_cache(maxsize=None)(
            lambda pid: date_shift(self.key, pid, int(self.date_shift_days)))

    # -- ids
    def learn(self, tables: Tables) -> None:
        """Collect every original id of the tables, with the type(s) it is an id of."""
        found: dict[str, set[str]] = {}

        def add(resource_type: str, values: Iterable[Any]) -> None:
            for v in values:
                if isinstance(v, str) and v:
                    found.setdefault(v, set()).add(resource_type)

        add("Patient", tables.patients["patient_id"])
        for df in (tables.events, tables.observations, tables.issues):
            add("Patient", df["patient_id"].dropna().unique())
            pairs = df[["resource_type", "resource_id"]].dropna(subset=["resource_id"])
            for rtype, ids in pairs.groupby(pairs["resource_type"].fillna(""), sort=False):
                add(str(rtype), ids["resource_id"].unique())
        add("Encounter", tables.events["encounter_id"].dropna().unique())
        for df in (tables.events, tables.observations, tables.issues, tables.codes):
            self.type_names.update(str(t) for t in df["resource_type"].dropna().unique())
        order = {"Patient": 0, "Encounter": 1}
        for original, types in found.items():
            ranked = sorted(types, key=lambda t: (order.get(t, 2), t))
            known = self.types_of.setdefault(original, [])
            known.extend(t for t in ranked if t not in known)
        self.odd_ids = sorted((i for i in self.types_of if not _VALID_ID.fullmatch(i)),
                              key=len, reverse=True)

    def _compute(self, resource_type: str, original: str) -> str:
        value = pseudonym(self.key, resource_type, original)
        previous = self._seen.setdefault(value, (resource_type, original))
        if previous != (resource_type, original) and PREFIXES.get(
                previous[0], DEFAULT_PREFIX) == PREFIXES.get(resource_type, DEFAULT_PREFIX):
            raise SpineError(f"pseudonym collision between two {resource_type or 'resource'} "
                             f"ids at {HEX_CHARS} hex digits; this should never happen")
        return value

    def pseudo(self, resource_type: str, original: Any) -> Any:
        if original is None or (not isinstance(original, str) and pd.isna(original)):
            return original
        if original == "":
            return original
        return self._pseudo(resource_type or "", str(original))

    def _type_for(self, original: str, text: str, start: int, ctx: _Context) -> str:
        types = self.types_of.get(original) or [""]
        for t in types:
            if t and text.endswith(f"{t}/", 0, start):
                return t
        if original == ctx.resource_id and ctx.resource_type in types:
            return ctx.resource_type
        if original == ctx.patient_id and "Patient" in types:
            return "Patient"
        if original == ctx.encounter_id and "Encounter" in types:
            return "Encounter"
        return types[0]

    def replace_ids(self, text: str, ctx: _Context | None = None, *,
                    protect_words: bool = False, protect_types: bool = False) -> str:
        """Every original id in `text` -> its pseudonym (ids bounded by `-`, `.` or any
        character that cannot be part of an id; the longest match wins).

        `protect_words` (running text): a bare number, a lower-case word or a resource
        type name is left alone unless in reference form (`Type/id`): in a message it is
        a position, a value or a word of the message (ids in messages are references,
        quoted values or file names, which are handled). `protect_types` (file names,
        URLs): the same for resource type names only (`Patient-example.json`).
        """
        ctx = ctx or _Context()
        for original in self.odd_ids:
            if original.strip() and original in text:
                text = text.replace(original, self.pseudo(
                    self._type_for(original, text, text.find(original), ctx), original))
        out: list[str] = []
        last = 0
        for run in _ID_CHARS.finditer(text):
            s = run.group()
            if _PSEUDONYM_RUN.fullmatch(s):
                continue
            bounds = sorted({0, len(s)} | {i for i, ch in enumerate(s) if ch in ".-"}
                            | {i + 1 for i, ch in enumerate(s) if ch in ".-"})
            i = 0
            while i < len(bounds) - 1:
                a = bounds[i]
                hit = None
                top = bisect.bisect_right(bounds, a + _MAX_ID) - 1
                for j in range(top, i, -1):
                    candidate = s[a:bounds[j]]
                    if candidate in self.types_of and not (
                            (protect_words or protect_types)
                            and self._protected(candidate, text, run.start() + a,
                                                words=protect_words)):
                        hit = j
                        break
                if hit is None:
                    i += 1
                    continue
                b = bounds[hit]
                begin = run.start() + a
                original = s[a:b]
                out.append(text[last:begin])
                out.append(self.pseudo(self._type_for(original, text, begin, ctx), original))
                last = run.start() + b
                i = hit
        out.append(text[last:])
        return "".join(out)

    def _protected(self, token: str, text: str, start: int, *, words: bool) -> bool:
        if _REFERENCE_BEFORE.search(text[max(0, start - 80):start]) or (
                start > 0 and text[start - 1] == "="):
            return False  # Type/id or name=id: an id whatever it looks like
        if token in self.type_names:
            return True
        return words and (token.isdigit() or _LOWER_WORD.fullmatch(token) is not None)

    def scrub_origin(self, text: Any, ctx: _Context | None = None) -> Any:
        """File, bundle entry or URL: ids in the file name or URL become pseudonyms; the
        position (`:line`, `#entry[i]`) is kept."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return text
        text = _clip(str(text))
        m = _LOCATION.search(text)
        source, location = (text[:m.start()], m.group()) if m else (text, "")
        return self.replace_ids(source, ctx, protect_types=True) + location

    def replace_ids_in_text(self, text: str, ctx: _Context | None = None) -> str:
        """Running text: file names and URLs in it as origins, the rest as words."""
        if text in self.types_of:
            return str(self.pseudo(self._type_for(text, "", 0, ctx or _Context()), text))
        pieces: list[str] = []
        last = 0
        for m in _PATHLIKE.finditer(text):
            pieces.append(self.replace_ids(text[last:m.start()], ctx, protect_words=True))
            pieces.append(self.scrub_origin(m.group(), ctx))
            last = m.end()
        pieces.append(self.replace_ids(text[last:], ctx, protect_words=True))
        return "".join(pieces)

    def _literal(self, quoted: str, ctx: _Context) -> str:
        """A quoted raw value: an id (whatever it looks like) -> its pseudonym; a
        pseudonym or reference to one stays; anything else -> [redacted]."""
        mark, content = quoted[0], quoted[1:-1]
        if content in self.types_of:
            return f"{mark}{self.pseudo(self._type_for(content, '', 0, ctx), content)}{mark}"
        if _KEEPABLE_LITERAL.fullmatch(content):
            return quoted
        return f"{mark}{REDACTED}{mark}"

    def scrub_free_text(self, text: Any, ctx: _Context) -> Any:
        """Ids -> pseudonyms (file names and URLs inside as origins), quoted raw values
        -> '[redacted]', dates -> [date]."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return text
        text = self.replace_ids_in_text(_clip(str(text)), ctx)
        text = _QUOTED.sub(lambda m: self._literal(m.group(), ctx), text)
        text = _NOT_A_DAY.sub(DATE_MARK, text)
        return _DATE_LIKE.sub(DATE_MARK, text)

    # -- tables
    def tables(self, tables: Tables) -> Tables:
        self.learn(tables)
        return Tables(self._patients(tables.patients), self._events(tables.events),
                      self._observations(tables.observations), self._issues(tables.issues),
                      tables.codes.copy())

    def _offsets(self, patient_ids: pd.Series) -> list[int]:
        return [self._shift(p) if isinstance(p, str) and p else 0 for p in patient_ids]

    def _patients(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        if self.date_shift_days:
            offsets = self._offsets(df["patient_id"])
            for column in PATIENT_DATE_COLUMNS:
                out[column] = pd.Series(
                    [shift_date(v, d) for v, d in zip(df[column], offsets, strict=True)],
                    index=df.index, dtype="object")
        out["patient_id"] = self._map(df["patient_id"], "Patient")
        return out

    def _events(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        if self.date_shift_days:
            offsets = self._offsets(df["patient_id"])
            for column in ("start", "end"):
                out[column] = pd.Series(
                    [shift_text(v, d) for v, d in zip(df[column], offsets, strict=True)],
                    index=df.index, dtype="string")
        out["note"] = pd.Series([
            self.scrub_free_text(n, _Context(t or "", r or "", p or "", e or ""))
            for n, t, r, p, e in zip(df["note"], _texts(df["resource_type"]),
                                     _texts(df["resource_id"]), _texts(df["patient_id"]),
                                     _texts(df["encounter_id"]), strict=True)
        ], index=df.index, dtype="string")
        out["patient_id"] = self._map(df["patient_id"], "Patient")
        out["encounter_id"] = self._map(df["encounter_id"], "Encounter")
        out["resource_id"] = self._map_typed(df["resource_type"], df["resource_id"])
        return out

    def _observations(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        if self.date_shift_days:
            offsets = self._offsets(df["patient_id"])
            out["effective"] = pd.Series(
                [shift_text(v, d) for v, d in zip(df["effective"], offsets, strict=True)],
                index=df.index, dtype="string")
            out["effective_date"] = pd.Series(
                [shift_date(v, d) for v, d in zip(df["effective_date"], offsets, strict=True)],
                index=df.index, dtype="object")
        out["patient_id"] = self._map(df["patient_id"], "Patient")
        out["resource_id"] = self._map_typed(df["resource_type"], df["resource_id"])
        return out

    def _issues(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        contexts = [_Context(t or "", r or "", p or "") for t, r, p in zip(
            _texts(df["resource_type"]), _texts(df["resource_id"]), _texts(df["patient_id"]),
            strict=True)]
        out["message"] = pd.Series([self.scrub_free_text(m, c) for m, c in zip(
            df["message"], contexts, strict=True)], index=df.index, dtype="string")
        out["origin"] = pd.Series([self.scrub_origin(o, c) for o, c in zip(
            df["origin"], contexts, strict=True)], index=df.index, dtype="string")
        out["patient_id"] = self._map(df["patient_id"], "Patient")
        out["resource_id"] = self._map_typed(df["resource_type"], df["resource_id"])
        return out

    def _map(self, column: pd.Series, resource_type: str) -> pd.Series:
        return pd.Series([self.pseudo(resource_type, v) for v in column],
                         index=column.index, dtype=column.dtype)

    def _map_typed(self, types: pd.Series, ids: pd.Series) -> pd.Series:
        return pd.Series([self.pseudo(t if isinstance(t, str) else "", v)
                          for t, v in zip(types, ids, strict=True)],
                         index=ids.index, dtype=ids.dtype)

    # -- manifest
    def manifest(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        def walk(value: Any) -> Any:
            if isinstance(value, str):
                return self.replace_ids_in_text(value)
            if isinstance(value, Mapping):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [walk(v) for v in value]
            return value

        out = walk(dict(manifest))
        out["pseudonymisation"] = {
            "method": "HMAC-SHA256", "key_id": key_id(self.key),
            "pseudonym_hex_digits": HEX_CHARS, "date_shift_days": int(self.date_shift_days),
            "free_text": "ids replaced; quoted values redacted; dates replaced by [date]",
            "birth_dates": "not output (age at the index biopsy only)",
        }
        return out


def _clip(text: str) -> str:
    """Free text longer than MAX_TEXT is cut (at a space, so no id is left half-cut)."""
    if len(text) <= MAX_TEXT:
        return text
    cut = text[:MAX_TEXT]
    space = cut.rfind(" ")
    return (cut[:space] if space > MAX_TEXT // 2 else "") + " [truncated]"


def _texts(column: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in column]


def pseudonymise_tables(tables: Tables, key: bytes, date_shift_days: int = 0) -> Tables:
    """A copy of `tables` with every patient, encounter and resource id replaced by its
    keyed pseudonym, free text scrubbed and, when `date_shift_days` > 0, every date of a
    patient moved by that patient's offset in [-date_shift_days, date_shift_days]."""
    return Pseudonymiser(key, date_shift_days).tables(tables)


def pseudonymise_manifest(manifest: Mapping[str, Any], tables: Tables, key: bytes,
                          date_shift_days: int = 0) -> dict[str, Any]:
    """A copy of `manifest` whose strings hold no original id of `tables` (the tables as
    extracted, before pseudonymisation), with a `pseudonymisation` block (no key)."""
    p = Pseudonymiser(key, date_shift_days)
    p.learn(tables)
    return p.manifest(manifest)


# ------------------------------------------------------------- de-identified datasets
DEID_MAP = "deid-map.json"  # the mapping back, in the state folder (OUT.state/)
PROVENANCE_PREFIX = "src"
CODE_PREFIX = "code"
SYSTEM_PREFIX = "urn:fhir-spine:system:"
OTHER = "[other]"
SERVER_TEXT_WITHHELD = "server message (OperationOutcome); its text is withheld in " \
                       "de-identified output"
TOP_CODED_AGE = 90  # Safe Harbor: ages over 89 are published as one group, "90 or older"

_PROVENANCE_DOMAIN = "fhir-spine/provenance/v1"
_CODE_DOMAIN = "fhir-spine/local-code/v1"
_SYSTEM_DOMAIN = "fhir-spine/local-system/v1"

# Terminologies whose codes name concepts, never people: kept under --pseudonymise even
# when no mapping names the code. Anything else is a site's local system.
STANDARD_SYSTEMS = (
    "http://snomed.info/sct", "http://loinc.org", "http://www.ama-assn.org/go/cpt",
    "http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-9-cm",
    "http://www.cms.gov/Medicare/Coding/ICD10", "http://www.whocc.no/atc",
    "http://www.nlm.nih.gov/research/umls/rxnorm", "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/", "http://unitsofmeasure.org",
    "http://fhir-spine.org/fhir/CodeSystem/spine-pathway",
)

# FHIR R4 status codes of the resources the pathway reads (Procedure, Encounter,
# Observation, DiagnosticReport, Condition, Medication*): the `vocabulary` rule.
FHIR_STATUSES = frozenset({
    "preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
    "entered-in-error", "unknown", "planned", "arrived", "triaged", "onleave", "finished",
    "cancelled", "registered", "partial", "preliminary", "final", "amended", "corrected",
    "appended", "active", "draft", "inactive", "recurrence", "relapse", "remission",
    "resolved", "intended", "received", "declined",
})

_CODED = re.compile(r"(?P<system>[^\s|,;'\"()]+)\|(?P<code>[^\s|,;'\"()]+)")


@lru_cache(maxsize=512)
def is_resource_type(name: str) -> bool:
    """A FHIR resource type name (fhir.resources knows it)."""
    if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", name):
        return False
    try:
        from fhir.resources import get_fhir_model_class

        get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return False
    return True


def is_standard_system(system: str) -> bool:
    return any(system == s or (s.endswith("/") and system.startswith(s))
               or system.startswith(s + "|") for s in STANDARD_SYSTEMS) \
        or system.startswith(("http://hl7.org/fhir/sid/icd-10",))


@dataclass
class DeidOptions:
    """What `--pseudonymise` was asked for."""

    key: bytes
    date_shift_days: int = 0
    top_code_ages: bool = False


class DeidentificationError(SpineError):
    """A column without a declared rule: a bug, nothing is published."""

    exit_code = ExitCode.INTERNAL


class Deidentifier:
    """Applies the rules `schema.py` declares for every column and manifest field.

    One instance per published dataset: `tables()` first (it learns the ids), then
    `manifest()`; `origin_map()` is the mapping back (provenance tokens, local codes and
    systems -> real values) for the state folder, never for the dataset.
    """

    def __init__(self, options: DeidOptions, mappings: Any = None, *,
                 extra_ids: Mapping[str, Iterable[str]] | None = None) -> None:
        self.options = options
        self.p = Pseudonymiser(options.key, options.date_shift_days)
        self.mappings = mappings
        self.extra_ids = {t: [str(i) for i in ids] for t, ids in (extra_ids or {}).items()}
        self.origins: dict[str, str] = {}
        self.codes: dict[str, list[str]] = {}
        self.systems: dict[str, str] = {}
        self._sensitive: dict[str, str] = {}   # raw source text -> its replacement
        self._index: dict[str, list[str]] | None = None
        self._code_cache: dict[tuple[str, str], str] = {}
        self._named = self._named_codes(mappings)
        self._mapped_systems = {e.system for group in self._entries(mappings)
                                for e in group}
        self.dropped_fields: list[str] = []
        self._search_type = ""

    # -- mappings
    @staticmethod
    def _entries(mappings: Any) -> list[list[Any]]:
        if mappings is None:
            return []
        return list(mappings.concepts.entries.values())

    def _named_codes(self, mappings: Any) -> set[tuple[str, str]]:
        return {(e.system, e.code) for group in self._entries(mappings) for e in group
                if e.code is not None}

    def _mapping_names(self, system: str, code: str) -> bool:
        if (system, code) in self._named:
            return True
        if self.mappings is None:
            return False
        from fhir_spine.concepts import Coding

        coding = Coding(system, code)
        return any(e.code is None and e.matches(coding)
                   for group in self._entries(self.mappings) for e in group)

    # -- single values
    def provenance(self, origin: Any) -> Any:
        if origin is None or (not isinstance(origin, str) and pd.isna(origin)):
            return origin
        text = str(origin)
        if not text or _PROVENANCE_TOKEN.fullmatch(text):
            return text
        digest = _digest(self.p.key, _PROVENANCE_DOMAIN, text).hex()[:HEX_CHARS]
        token = f"{PROVENANCE_PREFIX}-{digest}"
        self.origins.setdefault(token, text)
        return token

    def code(self, system: Any, code: Any) -> Any:
        if not isinstance(code, str) or not code:
            return code
        system = system if isinstance(system, str) else ""
        cached = self._code_cache.get((system, code))
        if cached is not None:
            return cached
        if is_standard_system(system) or self._mapping_names(system, code) \
                or _CODE_TOKEN.fullmatch(code):
            token = code
        else:
            digest = _digest(self.p.key, _CODE_DOMAIN, system, code).hex()[:HEX_CHARS]
            token = f"{CODE_PREFIX}-{digest}"
            self.codes.setdefault(token, [system, code])
            self._note_sensitive(code, token)
        self._code_cache[(system, code)] = token
        return token

    def system(self, system: Any) -> Any:
        if not isinstance(system, str) or not system:
            return system
        if is_standard_system(system) or system in self._mapped_systems \
                or _SYSTEM_TOKEN.fullmatch(system):
            return system
        token = SYSTEM_PREFIX + _digest(self.p.key, _SYSTEM_DOMAIN, system).hex()[:HEX_CHARS]
        self.systems.setdefault(token, system)
        self._note_sensitive(system, token)
        return token

    def display(self, concept: Any) -> Any:
        if not isinstance(concept, str) or not concept or self.mappings is None:
            return None
        return self.mappings.concepts.meanings.get(concept) or None

    def vocabulary(self, value: Any, column: str) -> Any:
        if not isinstance(value, str) or not value:
            return value
        known = is_resource_type(value) if column == "resource_type" \
            else value in FHIR_STATUSES
        return value if known else OTHER

    def age(self, value: Any) -> Any:
        if self.options.top_code_ages and value is not None and not pd.isna(value) \
                and int(value) > TOP_CODED_AGE - 1:
            return TOP_CODED_AGE
        return value

    def _coding(self, m: re.Match[str]) -> str:
        return f"{self.system(m.group('system'))}|{self.code(m.group('system'), m.group('code'))}"

    def _path_or_coding(self, m: re.Match[str]) -> str:
        coded = _CODED.fullmatch(m.group())
        return self._coding(coded) if coded else str(self.provenance(m.group()))

    def _note_sensitive(self, raw: str, replacement: str) -> None:
        if len(raw) >= 3 and raw not in self.p.types_of and raw not in self._sensitive:
            self._sensitive[raw] = replacement
            self._index = None

    def scrub(self, text: Any, ctx: _Context | None = None, *, origin: str | None = None,
              server_text: bool = False) -> Any:
        """Tool-written text under the `scrub` rule (see schema.DEID_RULES)."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return text
        text = _clip(str(text))
        if server_text:
            prefix = ""
            if origin and text.startswith(f"{origin}: "):
                prefix = f"{self.provenance(origin)}: "
            return prefix + SERVER_TEXT_WITHHELD
        if origin:
            text = text.replace(origin, str(self.provenance(origin)))
        text = _PATHLIKE.sub(self._path_or_coding, text)
        text = _CODED.sub(self._coding, text)
        for raw in self._sensitive_in(text):
            if raw in text:
                text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(raw) + r"(?![A-Za-z0-9])",
                              self._sensitive[raw], text)
        return self.p.scrub_free_text(text, ctx or _Context())

    def _sensitive_in(self, text: str) -> list[str]:
        """The raw source texts that may occur in `text`, longest first: looked up by
        their first word, so a message costs its length, not the number of codes."""
        if self._index is None:
            self._index = {}
            for raw in self._sensitive:
                first = _WORD.search(raw)
                self._index.setdefault(first.group() if first else "", []).append(raw)
        found = list(self._index.get("", ()))
        for word in set(_WORD.findall(text)):
            found += self._index.get(word, ())
        return sorted(set(found), key=len, reverse=True)

    # -- tables
    def tables(self, tables: Tables) -> Tables:
        from fhir_spine import schema

        for name, df in tables.items():
            columns = {c.name: c for c in schema.TABLES[name]}
            for column in df.columns:
                rule = columns[column].deid if column in columns else ""
                if rule not in schema.DEID_RULES:
                    raise DeidentificationError(
                        f"{name}.{column} has no de-identification rule in schema.py; "
                        "nothing published (a bug)")
        self.p.learn(tables)
        for rtype, ids in self.extra_ids.items():
            for original in ids:
                known = self.p.types_of.setdefault(original, [])
                if rtype not in known:
                    known.append(rtype)
        self.p.odd_ids = sorted((i for i in self.p.types_of if not _VALID_ID.fullmatch(i)),
                                key=len, reverse=True)
        # raw source text that free text may quote: displays (never published), and the
        # local codes and systems the rules replace
        for df in (tables.events, tables.codes):
            for value in df["display"].dropna().unique():
                self._note_sensitive(str(value), REDACTED)
        for s, c in zip(tables.codes["system"], tables.codes["code"], strict=True):
            self.code(s, c)
            self.system(s)
        for s, c in zip(tables.events["code_system"], tables.events["code"], strict=True):
            self.code(s, c)
            self.system(s)
        out = {name: self._table(name, df) for name, df in tables.items()}
        return Tables(**out)

    def _table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        from fhir_spine import schema

        out = df.copy()
        rules = {c.name: c.deid for c in schema.TABLES[name]}
        types = _texts(df["resource_type"]) if "resource_type" in df else [None] * len(df)
        rids = _texts(df["resource_id"]) if "resource_id" in df else [None] * len(df)
        pids = _texts(df["patient_id"]) if "patient_id" in df else [None] * len(df)
        encs = _texts(df["encounter_id"]) if "encounter_id" in df else [None] * len(df)
        contexts = [_Context(t or "", r or "", p or "", e or "")
                    for t, r, p, e in zip(types, rids, pids, encs, strict=True)]
        offsets = self.p._offsets(df["patient_id"]) if "patient_id" in df \
            and self.options.date_shift_days else [0] * len(df)
        for column in df.columns:
            rule, values = rules[column], df[column]
            new: list[Any]
            if rule == "keep":
                continue
            if rule == "pseudonym":
                rtype = {"patient_id": "Patient", "encounter_id": "Encounter"}.get(column)
                new = [self.p.pseudo(rtype if rtype else (t or ""), v)
                       for v, t in zip(values, types, strict=True)]
            elif rule == "date-shift":
                if not self.options.date_shift_days:
                    continue
                shift = shift_date if schema_dtype(name, column) == "date" else shift_text
                new = [shift(v, d) for v, d in zip(values, offsets, strict=True)]
            elif rule == "age":
                new = [self.age(v) for v in values]
            elif rule == "provenance":
                new = [self.provenance(v) for v in values]
            elif rule == "scrub":
                origins = _texts(df["origin"]) if "origin" in df else [None] * len(df)
                server = [c == "operation-outcome" for c in df["code"]] \
                    if name == "issues" else [False] * len(df)
                new = [self.scrub(v, ctx, origin=o, server_text=s) for v, ctx, o, s in zip(
                    values, contexts, origins, server, strict=True)]
            elif rule == "vocabulary":
                new = [self.vocabulary(v, column) for v in values]
            elif rule == "code":
                systems = df["code_system" if "code_system" in df else "system"]
                new = [self.code(s, v) for s, v in zip(systems, values, strict=True)]
            elif rule == "code-system":
                new = [self.system(v) for v in values]
            elif rule == "display":
                new = [self.display(c) for c in df["concept"]]
            elif rule == "drop":
                new = [None] * len(df)
            else:  # checked in tables(); a manifest-only rule on a column is a bug too
                raise DeidentificationError(f"{name}.{column}: rule {rule!r} is not one "
                                            "a column can have")
            out[column] = pd.Series(new, index=df.index,
                                    dtype="object" if str(values.dtype) == "object"
                                    else values.dtype)
        return out

    # -- manifest
    def manifest(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        from fhir_spine import schema

        patterns = [schema._pattern(c.name) for c in schema.MANIFEST]

        def declared_below(path: tuple[str, ...]) -> bool:
            return any(len(p) > len(path) and all(a in ("*", b) for a, b in zip(
                p, path, strict=False)) for p in patterns)

        def walk(value: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
            if isinstance(value, Mapping) and isinstance(value.get("resource_type"), str):
                self._search_type = value["resource_type"]  # a search record: its `_id`s
            if isinstance(value, Mapping) and (not path or declared_below(path)):
                return True, {k: v for k, (keep, v) in
                              ((k, walk(v, (*path, str(k)))) for k, v in value.items())
                              if keep}
            if isinstance(value, list) and declared_below(path):
                return True, [v for keep, v in (walk(x, (*path, "[]")) for x in value)
                              if keep]
            rule = schema.deid_rule(path)
            if rule is None or rule == "drop":
                if rule is None:
                    self.dropped_fields.append(".".join(path))
                return False, None
            return True, self._manifest_value(rule, value, path)

        _, out = walk(dict(manifest), ())
        out["pseudonymisation"] = {
            "method": "HMAC-SHA256", "key_id": key_id(self.p.key),
            "pseudonym_hex_digits": HEX_CHARS,
            "date_shift_days": int(self.options.date_shift_days),
            "ages_top_coded_at": TOP_CODED_AGE if self.options.top_code_ages else None,
            "rules": "every column and manifest field by its declared rule: see the "
                     "codebook's deid column",
            "free_text": "ids replaced; file names, URLs and positions replaced by "
                         "provenance pseudonyms; quoted values redacted; dates replaced by "
                         "[date]; source displays and local codes never published; server "
                         "messages withheld",
            "birth_dates": "not output (age at the index biopsy only)",
            **({"fields_not_published": sorted(set(self.dropped_fields))}
               if self.dropped_fields else {}),
        }
        return out

    def _manifest_value(self, rule: str, value: Any, path: tuple[str, ...]) -> Any:
        if rule == "keep":
            return value
        if isinstance(value, list):
            if rule == "withhold":
                return len(value)
            if rule == "ids" and path[-1] == "params":
                return [self._param(pair, path) for pair in value]
            return [self._manifest_value(rule, v, path) for v in value]
        if isinstance(value, Mapping):
            return {k: self._manifest_value(rule, v, (*path, str(k))) for k, v in value.items()}
        if not isinstance(value, str):
            return value if rule != "withhold" else 1
        if rule == "provenance":
            if value.startswith("fhir_spine/mappings/"):
                return value  # a default mapping file: package data, the same everywhere
            return self.provenance(value)
        if rule == "pseudonym":
            return self.p.pseudo("Group" if path[-1] == "group_id" else "", value)
        if rule == "ids":
            rtype = path[-1] if is_resource_type(path[-1]) else "Patient"
            return ",".join(self._id(piece, rtype) for piece in value.split(","))
        if rule == "vocabulary":
            return self.vocabulary(value, "resource_type")
        if rule == "withhold":
            return 1
        return self.scrub(value)  # scrub

    def _id(self, piece: str, rtype: str) -> str:
        kind, slash, rest = piece.partition("/")
        if slash and is_resource_type(kind) and rest:
            return f"{kind}/{self.p.pseudo(kind, rest)}"
        return str(self.p.pseudo(rtype, piece)) if piece else piece

    def _param(self, pair: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            return self.scrub(str(pair))
        name, value = str(pair[0]), str(pair[1])
        base = name.split(":")[0]
        if base in ("_id", "patient", "subject", "encounter", "_has"):
            rtype = {"patient": "Patient", "subject": "Patient",
                     "encounter": "Encounter"}.get(base, "")
            if base == "_id":
                rtype = self._search_type if is_resource_type(self._search_type) else ""
            return [name, ",".join(self._id(v, rtype or self._type_of(v)) for v in
                                   value.split(","))]
        if base in ("code", "_elements", "_count", "_lastUpdated", "_type", "_since",
                    "_include", "_revinclude", "_sort", "_total", "_summary", "status",
                    "category"):
            return [name, value]
        return [name, self.scrub(value)]

    def _type_of(self, original: str) -> str:
        types = self.p.types_of.get(original)
        return types[0] if types else "Patient"

    def origin_map(self) -> dict[str, Any]:
        return {"note": "fhir-spine de-identification: pseudonyms of provenance, local codes "
                        "and local systems -> the real values. Identified data: keep it with "
                        "the state, owner-only, never with the dataset.",
                "key_id": key_id(self.p.key),
                "origins": dict(sorted(self.origins.items())),
                "local_codes": dict(sorted(self.codes.items())),
                "local_systems": dict(sorted(self.systems.items()))}


_WORD = re.compile(r"[A-Za-z0-9]+")
_PROVENANCE_TOKEN = re.compile(PROVENANCE_PREFIX + r"-[0-9a-f]{" + str(HEX_CHARS) + r"}")
_CODE_TOKEN = re.compile(CODE_PREFIX + r"-[0-9a-f]{" + str(HEX_CHARS) + r"}")
_SYSTEM_TOKEN = re.compile(re.escape(SYSTEM_PREFIX) + r"[0-9a-f]{" + str(HEX_CHARS) + r"}")


def schema_dtype(table: str, column: str) -> str:
    from fhir_spine import schema

    return next(c.dtype for c in schema.TABLES[table] if c.name == column)


def drop_raw_layer(folder: Path, *, keep: bool) -> None:
    """After a successful pseudonymised `--bulk` run the export's job folder (the raw
    NDJSON: identified data) is deleted, unless `--keep-raw`: then stderr says where it
    is. Only what an export job holds is removed (`job.json` and its file folders)."""
    import shutil
    import sys

    from fhir_spine.sources.bulk.job import FOLDERS, JOB_FILE

    if not folder.is_dir():
        return
    if keep:
        print(f"fhir-spine: --keep-raw: the raw export in {folder.absolute()} holds "
              "identified data (names, identifiers); delete it when done", file=sys.stderr)
        return
    for name in FOLDERS.values():
        shutil.rmtree(folder / name, ignore_errors=True)
    (folder / JOB_FILE).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else is in there: not ours to delete
    print(f"fhir-spine: deleted the raw export {folder.absolute()} (identified data; "
          "--keep-raw keeps it)", file=sys.stderr)


def write_origin_map(path: Path, data: Mapping[str, Any]) -> None:
    """The mapping back, owner-only (0600 in a 0700 folder), replaced atomically."""
    import json
    import os

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- logs
_LOG_SERVER_TEXT = re.compile(r"(server message[^:]{0,40}: ).*", re.IGNORECASE | re.DOTALL)
_LOG_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]+", re.IGNORECASE)
_LOG_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/(?!\[)[^\s,;:'\")\]]+")
_LOG_PATH = re.compile(r"(?<![\w\[])(?:[^\s'\"]*/[^\s'\"]*|[^\s'\"/]+\.(?:ndjson|jsonl|json|gz"
                       r"|csv|txt|yaml|yml|xml)(?::[0-9]+|#entry\[[0-9]+\])*)(?![\w])")
_LOG_MIXED = re.compile(r"(?<![\w\-.\[])(?=[\w.\-]*[A-Za-z])(?=[\w.\-]*[0-9])[\w.\-]{3,}"
                        r"(?![\w\-.\]])")
_LOG_REFERENCE_DONE = re.compile(r"[A-Z][A-Za-z]+/\[id\][,;:.)]*")
_LOG_KEEP = re.compile(r"(?:" + _PSEUDONYM_TEXT + r"|src-[0-9a-f]{20}|sha256|SHA-256|UTF-8"
                       r"|HTTP/[0-9.]+|R4B?|[0-9]+(?:\.[0-9]+)*(?:s|ms|MB|KB|GB|MiB|KiB)?)")


def scrub_log_text(text: str, known: Iterable[str] = ()) -> str:
    """A log line under --pseudonymise (without --debug): server text withheld, URLs, file
    paths and names, references' ids, quoted values, dates, known ids and every token
    that mixes letters and digits (how record ids look) replaced. Counts, words, resource
    type names, pseudonyms and versions stay, so the line still says what happened."""
    text = _LOG_SERVER_TEXT.sub(lambda m: m.group(1) + "[withheld]", text)
    for value in sorted((k for k in known if k), key=len, reverse=True):
        if value in text:
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])",
                          "[id]", text)
    text = _LOG_URL.sub(lambda m: "[url]" + m.group()[len(m.group().rstrip(":,;.)")):],
                        text)
    text = _QUOTED.sub(lambda m: f"{m.group()[0]}{REDACTED}{m.group()[0]}", text)
    text = _LOG_REFERENCE.sub(lambda m: f"{m.group(1)}/[id]", text)
    text = _LOG_PATH.sub(lambda m: m.group() if _LOG_KEEP.fullmatch(m.group())
                         or _LOG_REFERENCE_DONE.fullmatch(m.group()) else "[path]", text)
    text = _DATE_LIKE.sub(DATE_MARK, text)
    return _LOG_MIXED.sub(lambda m: m.group() if _LOG_KEEP.fullmatch(m.group()) else "[id]",
                          text)


_DIGIT_IDS = re.compile(r"[0-9]+(?:\s*,\s*[0-9]+)*")


class LogScrubber(logging.Filter):
    """`scrub_log_text` on every record a handler emits, ours or a library's.

    String arguments that are all digits (or a list of such) are ids (counts are passed as
    numbers), so they become `[id]`; the structured fields of JSON lines are scrubbed the
    same way."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.known: set[str] = {k for k in known if k}

    def _arg(self, value: Any) -> Any:
        if isinstance(value, bool | int | float):
            return value
        text = str(value)
        if _DIGIT_IDS.fullmatch(text):
            return re.sub(r"[0-9]+", "[id]", text)
        return scrub_log_text(text, self.known)

    def _field(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: self._field(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._field(v) for v in value]
        if isinstance(value, str):
            return self._arg(value)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.args, tuple) and record.args:
                message = str(record.msg) % tuple(self._arg(a) for a in record.args)
            else:
                message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must still not leak or crash
            message = str(record.msg)
        record.msg, record.args = scrub_log_text(message, self.known), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = self._field(fields)
        record.exc_info, record.exc_text = None, None
        return True


def install_log_scrubbing(known: Iterable[str] = ()) -> LogScrubber:
    """Attach a `LogScrubber` to the root logger's handlers (before any other filter, so
    it sees the record's arguments)."""
    scrubber = LogScrubber(known)
    for handler in logging.getLogger().handlers:
        handler.filters.insert(0, scrubber)
    return scrubber
