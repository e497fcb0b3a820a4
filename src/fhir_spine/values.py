"""Observation and QuestionnaireResponse values -> one number, or the reason there is none.

Real systems send a score in many forms (issue 11, item 3). The rules, in order:

1. `dataAbsentReason` without a value: no number; the reason is named (an `issues` row).
2. `valueQuantity.value`, `valueInteger`, `valueDecimal` (answers): the number. A
   Quantity with a `comparator` (`<`, `>=`, ...) is not an exact score: not read.
3. `valueCodeableConcept` / `valueCoding`: the answer code's numeric meaning from the
   concept map's `value` group (`mappings/concepts.yaml`: LOINC answer lists LL2335-9 for
   0-10 pain and LL529-9 for ECOG, SNOMED and NCI Thesaurus ECOG grades); else the
   `ordinalValue` extension on a coding (http://hl7.org/fhir/StructureDefinition/ordinalValue,
   FHIR R4 extensions; also its predecessor iso21090-CO-value and R5's `itemWeight`).
4. `valueString` holding a plain number ("7", "7.5", "7,5", "7/10" when the denominator
   is the top of the measure's scale): the number (US Core and MII examples send pain
   this way).
5. Anything else (a word, a Range, a Ratio, a boolean, a period ...): no number; the
   problem names the form that was found, so a site can see what to map.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_spine.concepts import Coding, ConceptMap, parse_codings

ORDINAL_URLS = (
    "http://hl7.org/fhir/StructureDefinition/ordinalValue",
    "http://hl7.org/fhir/StructureDefinition/iso21090-CO-value",
    "http://hl7.org/fhir/StructureDefinition/itemWeight",
)
_NUMBER = re.compile(r"^\s*([+-]?\d+(?:[.,]\d+)?)\s*(?:/\s*(\d+(?:[.,]\d+)?))?\s*$")
# value[x] choices of Observation, Observation.component and QuestionnaireResponse answers
# that carry no single number; named in the message when they are all there is.
_OTHER_FORMS = ("valueRange", "valueRatio", "valueSampledData", "valueTime", "valueDateTime",
                "valuePeriod", "valueDate", "valueAttachment", "valueReference", "valueUri")


@dataclass(frozen=True)
class FoundValue:
    """The value forms present on one element (an Observation, a component, an answer)."""

    quantity: float | None = None
    comparator: str = ""
    integer: float | None = None
    string: str | None = None
    boolean: bool | None = None
    codings: tuple[Coding, ...] = ()
    ordinals: tuple[float, ...] = ()
    absent: tuple[Coding, ...] = ()
    other_forms: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return (self.quantity is None and self.integer is None and self.string is None
                and self.boolean is None and not self.codings and not self.other_forms)


@dataclass(frozen=True)
class ReadValue:
    """What `read_number` made of a `FoundValue`."""

    number: float | None
    form: str                 # e.g. "valueQuantity", "valueCodeableConcept LA6115-5"
    problem: str = ""         # why there is no number ("" when there is one or none at all)
    absent_reason: str = ""   # the dataAbsentReason code(s), when that is why


def _float(raw: Any) -> float | None:
    if raw is None or raw == "" or isinstance(raw, bool):
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def _ordinals(codings: Iterable[Mapping[str, Any]]) -> tuple[float, ...]:
    found = []
    for coding in codings:
        for ext in coding.get("extension") or () if isinstance(coding, Mapping) else ():
            if isinstance(ext, Mapping) and ext.get("url") in ORDINAL_URLS:
                number = _float(ext.get("valueDecimal", ext.get("valueInteger")))
                if number is not None:
                    found.append(number)
    return tuple(found)


def codings_of(codings: Any) -> tuple[Coding, ...]:
    """Raw `Coding` elements (JSON) -> `Coding`s; entries without a code are dropped."""
    out = []
    for c in codings or ():
        if isinstance(c, Mapping) and c.get("code"):
            out.append(Coding(str(c.get("system") or ""), str(c["code"]),
                              str(c.get("display") or "")))
    return tuple(out)


def from_element(element: Mapping[str, Any]) -> FoundValue:
    """The value forms of a raw element: `Observation.component[i]` or an answer."""
    quantity = element.get("valueQuantity")
    concept = element.get("valueCodeableConcept")
    coding = element.get("valueCoding")
    raw_codings: list[Mapping[str, Any]] = []
    if isinstance(concept, Mapping):
        raw_codings += [c for c in concept.get("coding") or () if isinstance(c, Mapping)]
    if isinstance(coding, Mapping):
        raw_codings.append(coding)
    absent = element.get("dataAbsentReason")
    integer = element.get("valueInteger", element.get("valueDecimal"))
    string = element.get("valueString")
    boolean = element.get("valueBoolean")
    return FoundValue(
        quantity=_float(quantity.get("value")) if isinstance(quantity, Mapping) else None,
        comparator=str(quantity.get("comparator") or "") if isinstance(quantity, Mapping)
        else "",
        integer=_float(integer),
        string=string if isinstance(string, str) else None,
        boolean=boolean if isinstance(boolean, bool) else None,
        codings=codings_of(raw_codings),
        ordinals=_ordinals(raw_codings),
        absent=codings_of(absent.get("coding")) if isinstance(absent, Mapping) else (),
        other_forms=tuple(f for f in _OTHER_FORMS if element.get(f) not in (None, "", [], {})),
    )


def from_row(row: Mapping[str, Any]) -> FoundValue:
    """The value forms of an Observation view row (mappings/views/Observation.json)."""
    other = []
    for column, form in (("value_range_low", "valueRange"), ("value_range_high", "valueRange"),
                         ("value_ratio_numerator", "valueRatio"),
                         ("value_sampled_data", "valueSampledData"),
                         ("value_time", "valueTime"), ("value_datetime", "valueDateTime"),
                         ("value_period_start", "valuePeriod")):
        if row.get(column) not in (None, "") and form not in other:
            other.append(form)
    boolean = row.get("value_boolean")
    string = row.get("value_string")
    return FoundValue(
        quantity=_float(row.get("value_quantity")),
        comparator=str(row.get("value_comparator") or ""),
        integer=_float(row.get("value_integer")),
        string=string if isinstance(string, str) else None,
        boolean=boolean if isinstance(boolean, bool) else None,
        codings=parse_codings(row.get("value_codings")),
        ordinals=_ordinals([{"extension": row.get("value_coding_extensions") or []}]),
        absent=parse_codings(row.get("data_absent_reason_codings")),
        other_forms=tuple(other),
    )


def read_number(found: FoundValue, concepts: ConceptMap, scale_top: float | None = None
                ) -> ReadValue:
    """The number a value means (rules in the module docstring)."""
    if found.quantity is not None:
        if found.comparator:
            return ReadValue(None, "valueQuantity", f"valueQuantity has comparator "
                             f"{found.comparator!r} ({found.comparator}{found.quantity:g}): "
                             "not an exact score")
        return ReadValue(found.quantity, "valueQuantity")
    if found.integer is not None:
        return ReadValue(found.integer, "valueInteger")
    if found.codings:
        hit = concepts.first("value", found.codings)
        shown = ", ".join(f"{c.system}|{c.code}" for c in found.codings)
        if hit is not None and hit.value is not None:
            return ReadValue(hit.value, f"valueCodeableConcept {hit.coding.code}")
        if found.ordinals:
            return ReadValue(found.ordinals[0], "valueCodeableConcept ordinalValue")
        return ReadValue(None, "valueCodeableConcept",
                         f"valueCodeableConcept {shown} has no numeric meaning (not in the "
                         "`value` group of concepts.yaml, no ordinalValue extension)")
    if found.string is not None:
        number = parse_number_text(found.string, scale_top)
        if number is not None:
            return ReadValue(number, "valueString")
        return ReadValue(None, "valueString",
                         f"valueString {_short(found.string)!r} is not a number")
    if found.absent:
        codes = ", ".join(c.code for c in found.absent)
        return ReadValue(None, "dataAbsentReason", f"dataAbsentReason {codes}", codes)
    if found.boolean is not None:
        return ReadValue(None, "valueBoolean", f"valueBoolean {str(found.boolean).lower()} "
                         "is not a score")
    if found.other_forms:
        return ReadValue(None, found.other_forms[0],
                         f"{found.other_forms[0]} is not a single score")
    return ReadValue(None, "", "")


def parse_number_text(text: str, scale_top: float | None = None) -> float | None:
    """A plain number in text: "7", " 7.5 ", "7,5"; "7/10" only when 10 is `scale_top`."""
    m = _NUMBER.match(text)
    if m is None:
        return None
    value = float(m.group(1).replace(",", "."))
    if m.group(2) is not None:
        denominator = float(m.group(2).replace(",", "."))
        if scale_top is None or denominator != scale_top:
            return None
    return value


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
