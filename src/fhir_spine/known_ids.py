"""The original ids one dataset holds, and their pseudonyms wherever they occur: in id
columns and inside free text.

Ids hide in text the tool writes (an issue quotes a reference, a file name carries a
Patient id), so a published dataset must find every id of the dataset in it, not only
in the id columns. `KnownIds` learns the ids (with their types) from the tables, then
replaces them; `deid.Deidentifier` uses it for the `pseudonym` and `scrub` rules.

Birth dates are never in the tables (`patients.age_at_biopsy` only); free text could
still carry one (an issue about an unparseable birthDate quotes it), so free text is
scrubbed:

Free text (`events.note`, `issues.message`, strings of the manifest)
    original ids (every value of an id column) are replaced by their pseudonyms: in
    file names and URLs (`Patient-<id>.json`, `.../Procedure/<id>`) and in reference
    form (`Procedure/<id>`) always; bare in running text only when they cannot be
    ordinary text (a number, a lower-case word or a resource type name there is a
    position, a value or a word of the message). Positions (`:12`, `#entry[3]`) are
    kept. In notes and messages every quoted literal (the raw input values messages
    quote: references, dates, free text) becomes the pseudonym when it is an id and
    `'[redacted]'` otherwise, and every date-like text becomes `[date]`. Free text is
    cut to `MAX_TEXT` characters first.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

from fhir_spine.errors import SpineError, UsageError
from fhir_spine.pseudonymise import (
    DEFAULT_PREFIX,
    HEX_CHARS,
    MAX_DATE_SHIFT_DAYS,
    MIN_KEY_BYTES,
    PREFIXES,
    PSEUDONYM_TEXT,
    date_shift,
    pseudonym,
)
from fhir_spine.tables import Tables

MAX_TEXT = 2000  # free text is cut to this many characters before it is scrubbed
REDACTED = "[redacted]"
DATE_MARK = "[date]"

# FHIR ids are [A-Za-z0-9-.]{1,64}; such ids are found in free text by runs of those
# characters, any other (invalid) id by plain substring search.
_ID_CHARS = re.compile(r"[A-Za-z0-9.\-]+")
VALID_ID = re.compile(r"[A-Za-z0-9.\-]{1,64}")
_MAX_ID = 64
_KEEPABLE_LITERAL = re.compile(r"(?:[A-Za-z]+/)?" + PSEUDONYM_TEXT
                               + r"|\[redacted\]|\(none\)")
_PSEUDONYM_RUN = re.compile(PSEUDONYM_TEXT)
_REFERENCE_BEFORE = re.compile(r"\b[A-Z][A-Za-z]+/\Z")
_LOWER_WORD = re.compile(r"[a-z]+")
_LOCATION = re.compile(r"(?::[0-9]+|#entry\[[0-9]+\])+\Z")
PATHLIKE = re.compile(r"https?://[^\s'\"]+|[^\s'\"]+\.(?:ndjson|jsonl|json)(?:\.gz)?"
                      r"(?:(?::[0-9]+|#entry\[[0-9]+\])+)?")
QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
DATE_LIKE = re.compile(
    r"(?<![0-9])[0-9]{4}-[0-9]{1,2}(?:-[0-9]{1,2})?"
    r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
    r"(?![0-9])")
# classify.py writes partial dates unquoted: "date 2023 is not a calendar day"
_NOT_A_DAY = re.compile(r"(?<=\bdate )(?!\(none\))\S+(?= is not a calendar day)")


@dataclass
class Context:
    """The row a text belongs to: its own ids decide the type of an id that has several."""

    resource_type: str = ""
    resource_id: str = ""
    patient_id: str = ""
    encounter_id: str = ""


@dataclass
class KnownIds:
    """Pseudonyms and free-text scrubbing for one dataset (the ids it holds), with each
    patient's date offset."""

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
        self.odd_ids = sorted((i for i in self.types_of if not VALID_ID.fullmatch(i)),
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

    def _type_for(self, original: str, text: str, start: int, ctx: Context) -> str:
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

    def replace_ids(self, text: str, ctx: Context | None = None, *,
                    protect_words: bool = False, protect_types: bool = False) -> str:
        """Every original id in `text` -> its pseudonym (ids bounded by `-`, `.` or any
        character that cannot be part of an id; the longest match wins).

        `protect_words` (running text): a bare number, a lower-case word or a resource
        type name is left alone unless in reference form (`Type/id`): in a message it is
        a position, a value or a word of the message (ids in messages are references,
        quoted values or file names, which are handled). `protect_types` (file names,
        URLs): the same for resource type names only (`Patient-example.json`).
        """
        ctx = ctx or Context()
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

    def scrub_origin(self, text: Any, ctx: Context | None = None) -> Any:
        """File, bundle entry or URL: ids in the file name or URL become pseudonyms; the
        position (`:line`, `#entry[i]`) is kept."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return text
        text = clip(str(text))
        m = _LOCATION.search(text)
        source, location = (text[:m.start()], m.group()) if m else (text, "")
        return self.replace_ids(source, ctx, protect_types=True) + location

    def replace_ids_in_text(self, text: str, ctx: Context | None = None) -> str:
        """Running text: file names and URLs in it as origins, the rest as words."""
        if text in self.types_of:
            return str(self.pseudo(self._type_for(text, "", 0, ctx or Context()), text))
        pieces: list[str] = []
        last = 0
        for m in PATHLIKE.finditer(text):
            pieces.append(self.replace_ids(text[last:m.start()], ctx, protect_words=True))
            pieces.append(self.scrub_origin(m.group(), ctx))
            last = m.end()
        pieces.append(self.replace_ids(text[last:], ctx, protect_words=True))
        return "".join(pieces)

    def _literal(self, quoted: str, ctx: Context) -> str:
        """A quoted raw value: an id (whatever it looks like) -> its pseudonym; a
        pseudonym or reference to one stays; anything else -> [redacted]."""
        mark, content = quoted[0], quoted[1:-1]
        if content in self.types_of:
            return f"{mark}{self.pseudo(self._type_for(content, '', 0, ctx), content)}{mark}"
        if _KEEPABLE_LITERAL.fullmatch(content):
            return quoted
        return f"{mark}{REDACTED}{mark}"

    def scrub_free_text(self, text: Any, ctx: Context) -> Any:
        """Ids -> pseudonyms (file names and URLs inside as origins), quoted raw values
        -> '[redacted]', dates -> [date]."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return text
        text = self.replace_ids_in_text(clip(str(text)), ctx)
        text = QUOTED.sub(lambda m: self._literal(m.group(), ctx), text)
        text = _NOT_A_DAY.sub(DATE_MARK, text)
        return DATE_LIKE.sub(DATE_MARK, text)

    def offsets(self, patient_ids: pd.Series) -> list[int]:
        """Each row's date shift: its patient's offset (0 without a patient)."""
        return [self._shift(p) if isinstance(p, str) and p else 0 for p in patient_ids]


def clip(text: str) -> str:
    """Free text longer than MAX_TEXT is cut (at a space, so no id is left half-cut)."""
    if len(text) <= MAX_TEXT:
        return text
    cut = text[:MAX_TEXT]
    space = cut.rfind(" ")
    return (cut[:space] if space > MAX_TEXT // 2 else "") + " [truncated]"
