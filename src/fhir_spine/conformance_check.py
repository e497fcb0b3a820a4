"""Validate a folder's resources against the profiles on a FHIR server (`$validate`).

The logic of `fhir-spine validate`: store the conformance resources on the server
(`conformance.all_resources`: CodeSystem, ValueSets, StructureDefinitions, each `PUT
Type/id`, so running twice stores them once), pick each resource's profile by its type and
codes through the concept map (the same lookup the pathway makes, so a resource is held to
the profile of the concept it will be read as), `POST [type]/$validate?profile=URL`, and
turn the OperationOutcomes into rows. Resources no profile selects get the server's core R4
validation (`POST [type]/$validate` without a profile).

Validation is the server's: this module judges nothing itself, it only chooses and reports.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from fhir_spine import conformance
from fhir_spine.concepts import Coding, ConceptMap
from fhir_spine.errors import AuthError, ServerError
from fhir_spine.redact import redact_url
from fhir_spine.sources.files import RawResource, ReadProblem

if TYPE_CHECKING:
    from fhir_spine.sources.http import FhirClient

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
CORE = "core R4"  # the profile column of a resource no profile of ours selects
UNREAD = "not read"  # ... of an item the folder reader could not turn into a resource
SHOWN = ("fatal", "error", "warning")  # severities in the table without --verbose
# Statuses with which a server answers $validate with an OperationOutcome describing the
# resource (HAPI: 200 when valid, 412 Precondition Failed when not; others 400/422).
OUTCOME_STATUSES = (200, 400, 412, 422)


@dataclass(frozen=True)
class Finding:
    """One OperationOutcome issue: severity, issue type code, one-line text, where."""

    severity: str
    code: str
    message: str
    location: str = ""


@dataclass(frozen=True)
class Checked:
    """One resource (or unreadable item), the profile it was held to, what the server said."""

    key: str  # Type/id, or where it was read when it has no id
    profile: str  # a profile id, CORE or UNREAD
    findings: tuple[Finding, ...]

    def count(self, *severities: str) -> int:
        return sum(1 for f in self.findings if f.severity in severities)

    @property
    def errors(self) -> int:
        return self.count("fatal", "error")

    @property
    def warnings(self) -> int:
        return self.count("warning")


def _codings(concept: Any) -> list[Coding]:
    if not isinstance(concept, dict):
        return []
    return [Coding(str(c.get("system") or ""), str(c.get("code")))
            for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]


_PROFILE_OF: dict[tuple[str, str], conformance.Profile] = {
    (p.type, concept): p for p in conformance.PROFILES for concept in p.concepts}
_ELEMENT = {"Observation": "observation", "Procedure": "procedure"}


def profile_for(resource: dict[str, Any], concepts: ConceptMap) -> conformance.Profile | None:
    """The profile a resource's type and code select, or None (core validation only).

    The concept map decides, as for the pathway: an Observation whose code maps to
    `sins_total` is a SINS Observation. A code that counts only with a vertebral body site
    (`requires: vertebral-body-site`, a generic SNOMED biopsy) selects the profile only when
    a body site maps to a level: a lung biopsy is not a vertebral biopsy to judge.
    """
    rtype = str(resource.get("resourceType") or "")
    element = _ELEMENT.get(rtype)
    if element is None:
        return None
    levels = any(concepts.first("body-site", _codings(site)) is not None
                 for site in resource.get("bodySite") or [])
    for match in concepts.matches(element, _codings(resource.get("code"))):
        if match.requires == "vertebral-body-site" and not levels:
            continue
        profile = _PROFILE_OF.get((rtype, match.concept))
        if profile is not None:
            return profile
    return None


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def findings_of(outcome: dict[str, Any]) -> tuple[Finding, ...]:
    """The issues of an OperationOutcome, each in one line."""
    out = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = str(issue.get("diagnostics") or (issue.get("details") or {}).get("text")
                   or issue.get("code") or "")
        where = issue.get("expression") or issue.get("location") or []
        out.append(Finding(str(issue.get("severity") or "error"), str(issue.get("code") or ""),
                           one_line(text), str(where[0]) if where else ""))
    return tuple(out)


def upload(client: FhirClient, resources: Iterable[dict[str, Any]]) -> int:
    """PUT each conformance resource as `Type/id` (idempotent); how many were stored.

    A StructureDefinition is then replaced by the server's own `$snapshot` of it when the
    server offers that operation: a validator must expand a differential into a snapshot
    before it can use it, and a server that does not keep that expansion (HAPI with its
    validation cache off) does it again for every resource, three to four times slower
    (measured on the HAPI test server: 1.3-2.3 s a SINS Observation without, 0.4-0.6 s
    with). The committed files stay differential only."""
    stored = 0
    for resource in resources:
        path = f"{resource['resourceType']}/{resource['id']}"
        client.request("PUT", client.url(path), body=orjson.dumps(resource),
                       headers={"Content-Type": FHIR_JSON})
        stored += 1
        if resource["resourceType"] == "StructureDefinition":
            _store_snapshot(client, path)
    return stored


def _store_snapshot(client: FhirClient, path: str) -> None:
    response = client.request("GET", client.url(f"{path}/$snapshot"), raise_for_status=False)
    if response.status_code != 200:
        log.info("%s/$snapshot answered %d: the server expands the profile itself", path,
                 response.status_code)
        return
    expanded = client.json_of(response, f"GET {path}/$snapshot")
    if expanded.get("resourceType") != "StructureDefinition" or not expanded.get("snapshot"):
        return
    expanded.pop("meta", None)
    client.request("PUT", client.url(path), body=orjson.dumps(expanded),
                   headers={"Content-Type": FHIR_JSON})


def validate(client: FhirClient, resource: dict[str, Any],
             profile: conformance.Profile | None) -> tuple[Finding, ...]:
    """`POST [type]/$validate` (with `profile=` when one is selected): its issues."""
    params = [("profile", conformance.profile_url(profile.id))] if profile else None
    url = client.url(f"{resource['resourceType']}/$validate", params)
    shown = f"POST {redact_url(url)}"
    response = client.request("POST", url, body=orjson.dumps(resource),
                              headers={"Content-Type": FHIR_JSON}, raise_for_status=False)
    if response.status_code in (401, 403):
        raise AuthError(f"{shown}: answered {response.status_code}; check the credentials")
    body = client.json_of(response, shown)
    if response.status_code not in OUTCOME_STATUSES or body.get("resourceType") != \
            "OperationOutcome":
        detail = "; ".join(f.message for f in findings_of(body))
        raise ServerError(f"{shown}: answered {response.status_code} with a "
                          f"{body.get('resourceType')!r}" + (f": {one_line(detail)}" if detail
                                                              else ""),
                          status=response.status_code)
    return findings_of(body)


def _key(resource: dict[str, Any], origin: str) -> str:
    rid = resource.get("id")
    return f"{resource['resourceType']}/{rid}" if rid else f"{resource['resourceType']} at {origin}"


def check(client: FhirClient, items: Iterable[RawResource | ReadProblem], concepts: ConceptMap,
          *, workers: int = 2, progress: Callable[[int], None] | None = None) -> list[Checked]:
    """Validate every resource (in `workers` threads); results in reading order."""

    def one(item: RawResource | ReadProblem) -> Checked:
        if isinstance(item, ReadProblem):
            return Checked(item.origin, UNREAD, (Finding("error", item.code, item.message),))
        profile = profile_for(item.resource, concepts)
        found = validate(client, item.resource, profile)
        return Checked(_key(item.resource, item.origin), profile.id if profile else CORE, found)

    def ticking(results: Iterator[Checked]) -> Iterator[Checked]:
        for result in results:
            if progress is not None:
                progress(1)
            yield result

    if workers <= 1:
        return list(ticking(one(i) for i in items))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate") as pool:
        return list(ticking(pool.map(one, items)))


def table(checked: Iterable[Checked], verbose: bool = False) -> list[str]:
    """One line per issue shown (errors and warnings; information too when `verbose`),
    grouped by resource; resources with nothing to show are left out."""
    rows = [(c.key, c.profile, f.severity, f.location, f.message)
            for c in checked for f in c.findings if verbose or f.severity in SHOWN]
    if not rows:
        return []
    head = ("resource", "profile", "severity", "location", "message")
    widths = [min(48, max(len(r[i]) for r in [head, *rows])) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4]

    return [line(head), *(line(r) for r in rows)]


def by_profile(checked: Iterable[Checked]) -> dict[str, dict[str, int]]:
    """Per profile: resources, resources with errors, resources with warnings (the
    profiles in their declared order, then core validation, then unreadable items)."""
    order = [p.id for p in conformance.PROFILES] + [CORE, UNREAD]
    counts: dict[str, Counter[str]] = {}
    for c in checked:
        n = counts.setdefault(c.profile, Counter())
        n["resources"] += 1
        n["with_errors"] += c.errors > 0
        n["with_warnings"] += c.warnings > 0
    return {p: {k: counts[p][k] for k in ("resources", "with_errors", "with_warnings")}
            for p in order if p in counts}


def summary_lines(summary: dict[str, dict[str, int]]) -> list[str]:
    total = {k: sum(s[k] for s in summary.values())
             for k in ("resources", "with_errors", "with_warnings")}
    lines = [f"{'profile':<24}{'resources':>10}{'with errors':>13}{'with warnings':>15}"]
    for name, s in [*summary.items(), ("total", total)]:
        lines.append(f"{name:<24}{s['resources']:>10}{s['with_errors']:>13}"
                     f"{s['with_warnings']:>15}")
    return lines
