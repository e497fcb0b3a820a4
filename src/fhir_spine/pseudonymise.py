"""Keys and the keyed primitives of pseudonymisation: why a pseudonym or a date shift is
safe to publish, and the one place that decides how each is computed.

`deid.py` applies them to a dataset, `known_ids.py` finds ids in free text; both only
call these functions, so every pseudonym of every command is the same for the same key.

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
    4e-9 for a hundred million. A collision is still never silent: it raises
    (`known_ids.KnownIds`).

Date shifting (`date_shift_days = N > 0`)
    Each patient gets one offset in [-N, N] days, derived from HMAC(key, patient id), and
    every date and instant of that patient in every table moves by exactly that many
    days (wall clock and UTC offset kept), so every interval, in days or in hours, is
    unchanged, as is the order of events. Partial dates (`2023-04`) cannot be moved
    exactly and are dropped. Ages are computed before, from the true dates.

The key comes from `FHIR_SPINE_PSEUDONYM_KEY` or a key file, is required, must be at
least `MIN_KEY_BYTES` bytes, and is never written or logged by this module (the
manifest gets only `key_id`, an HMAC of a constant, to tell whether two datasets were
made with the same key). Make one with
`python -c "import secrets; print(secrets.token_hex(32))"`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import stat
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from fhir_spine.errors import UsageError

log = logging.getLogger(__name__)

ENV_VAR = "FHIR_SPINE_PSEUDONYM_KEY"
MIN_KEY_BYTES = 32
HEX_CHARS = 20
MAX_DATE_SHIFT_DAYS = 36500

PREFIXES = {
    "Patient": "pat", "Encounter": "enc", "Procedure": "proc", "Observation": "obs",
    "DiagnosticReport": "dr", "Condition": "cond", "MedicationRequest": "mreq",
    "MedicationAdministration": "madm", "Medication": "med",
}
DEFAULT_PREFIX = "res"

_PSEUDONYM_DOMAIN = b"fhir-spine/pseudonym/v1"
_SHIFT_DOMAIN = b"fhir-spine/date-shift/v1"
_KEY_ID_DOMAIN = b"fhir-spine/key-id/v1"

# A pseudonym as text: what free text and log scrubbing recognise and leave alone.
PSEUDONYM_TEXT = (r"(?:" + "|".join(sorted(set(PREFIXES.values()) | {DEFAULT_PREFIX}))
                  + r")-[0-9a-f]{" + str(HEX_CHARS) + r"}")
_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


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
def keyed_digest(key: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of the NUL-joined parts: every keyed value of de-identification."""
    message = b"\x00".join(p.encode("utf-8", "surrogatepass") for p in parts)
    return hmac.new(key, message, hashlib.sha256).digest()


def pseudonym(key: bytes, resource_type: str, original: str) -> str:
    """`<prefix>-<hex>` for the id `original` of `resource_type`."""
    digest = keyed_digest(key, _PSEUDONYM_DOMAIN.decode(), resource_type or "", original)
    return f"{PREFIXES.get(resource_type, DEFAULT_PREFIX)}-{digest.hex()[:HEX_CHARS]}"


def date_shift(key: bytes, patient_id: str, max_days: int) -> int:
    """The patient's offset in days, in [-max_days, max_days] (0 when max_days is 0)."""
    if max_days <= 0:
        return 0
    digest = keyed_digest(key, _SHIFT_DOMAIN.decode(), patient_id)
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
