"""`--terminology URL`: expand the intensional concepts (`is-a` entries of concepts.yaml, the
`is-a` filters of the ValueSets in profiles/valuesets/) against a FHIR terminology server.

Once per run, before any resource is read: for each `is-a` entry, `POST ValueSet/$expand`
with the one-include ValueSet `{system, filter: concept is-a CODE}` and `count` =
`terminology_max_expansion` (settings.yaml, `--terminology-max-expansion`; default 10000);
every code of the expansion becomes an exact entry of that concept
(`ConceptMap.add_descendants`), so a code the expansion lists never costs a request (the
answers are the run's cache, and workers of a parallel run get them with the map).

An expansion can be incomplete: `expansion.total` above the codes returned (paged or
truncated), as many codes as the cap with no `total` (the cap reached), or the server
refusing it (a 4xx OperationOutcome, or any OperationOutcome saying the expansion is too
large: HAPI answers 500 "HAPI-0831: Expansion of ValueSet produced too many codes (maximum
N)", and caps `count` at 1000 itself). The codes it did list are added all the same, and the
entry is marked open: a code of that system that the run meets and the map does not know is
then decided by the server one by one (terminology_codes.py: `CodeSystem/$subsumes`, else
`ValueSet/$validate-code`), cached for the run.

The manifest's `terminology` block records the server, the code system versions the server
says it used, per `is-a` entry the codes listed and added and, when incomplete, why
(`incomplete`), how many codes it added, and the per-code decisions (`codes_decided`,
`codes_member`, `codes_not_member`, `codes_unknown`, `codes_failed`, `requests`,
`operations`).

Without `--terminology` the offline entries (the parent code and the listed descendants)
are the expansion: no server is ever required.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from fhir_spine.concepts import ConceptMap
from fhir_spine.errors import ServerError, ServerUnreachable
from fhir_spine.terminology_codes import (
    CodeDecider,
    TerminologyUnavailable,
    is_a_value_set,
    outcome_text,
    request,
)

log = logging.getLogger(__name__)
MAX_CODES = 10000  # default of `terminology_max_expansion`
# An OperationOutcome saying the expansion is too big (HAPI-0831 "produced too many codes",
# tx servers "too costly"): the server limits it, whatever the HTTP status.
_TOO_LARGE = ("too many", "too costly", "too large", "exceed")

__all__ = ["MAX_CODES", "TerminologyUnavailable", "apply"]


def _expand(session: requests.Session, base: str, system: str, parent: str, cap: int
            ) -> tuple[list[str], set[str], str | None]:
    """(codes, code system versions, why the expansion is incomplete or None)."""
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": is_a_value_set(system, parent)},
        {"name": "count", "valueInteger": cap}]}
    r = request(session, "POST", f"{base}/ValueSet/$expand", base, "ValueSet/$expand",
                json=body)
    if r.status_code != 200:
        text = outcome_text(r)
        refused = text and (400 <= r.status_code < 500 and r.status_code not in (401, 403)
                            or any(t in text.lower() for t in _TOO_LARGE))
        if refused:
            return [], set(), f"refused: {r.status_code} {text}"
        raise ServerError(f"terminology server {base}: ValueSet/$expand of {system} is-a "
                          f"{parent} answered {r.status_code}", status=r.status_code)
    try:
        expansion = r.json().get("expansion") or {}
    except (ValueError, AttributeError):
        raise ServerError(f"terminology server {base}: $expand answer is not JSON") from None
    codes: list[str] = []
    versions: set[str] = set()
    for c in expansion.get("contains") or []:
        if c.get("system") == system and c.get("code"):
            codes.append(str(c["code"]))
            if c.get("version"):
                versions.add(str(c["version"]))
    for p in expansion.get("parameter") or []:
        if p.get("name") in ("used-codesystem", "version") and p.get("valueUri"):
            uri = str(p["valueUri"])
            if uri.startswith(system):
                versions.add(uri.partition("|")[2] or uri)
    returned = len(expansion.get("contains") or [])
    total = expansion.get("total")
    incomplete = None
    if isinstance(total, int) and total > returned:
        incomplete = f"total {total} > {returned} returned"
    elif not isinstance(total, int) and returned >= cap:
        incomplete = f"cap reached: {returned} codes returned, no total"
    return codes, versions, incomplete


def apply(cmap: ConceptMap, base: str, *, optional: bool = False,
          session: requests.Session | None = None, max_expansion: int = MAX_CODES
          ) -> dict[str, Any]:
    """Expand every `is-a` entry of `cmap` on the server at `base` and add the codes; an
    incomplete expansion leaves its entry to per-code decisions (`cmap.decider`).

    Returns the manifest's `terminology` block (the per-code counts in it grow during the
    run). An unreachable or failing server raises (exit 4 / 5, one line) unless
    `optional`: then a warning, and the offline entries.
    """
    base = base.rstrip("/")
    session = session or requests.Session()
    report: dict[str, Any] = {"server": base, "used": True, "max_expansion": max_expansion,
                              "code_systems": {}, "expansions": [], "codes_added": 0,
                              "warning": None}
    work = cmap.intensional()
    expanded: list[tuple[str, str, str, list[str], str | None]] = []
    try:
        for concept, system, parent in work:
            codes, versions, incomplete = _expand(session, base, system, parent,
                                                  max_expansion)
            expanded.append((concept, system, parent, codes, incomplete))
            report["code_systems"].setdefault(system, set()).update(versions)
    except (ServerUnreachable, ServerError) as exc:
        if not optional:
            raise
        message = f"{exc}; --terminology-optional: using the offline expansions"
        log.warning("%s", message)
        return {"server": base, "used": False, "code_systems": {}, "expansions": [],
                "codes_added": 0, "warning": message}
    report["code_systems"] = {k: sorted(v) for k, v in report["code_systems"].items()}
    open_entries = 0
    for concept, system, parent, codes, incomplete in expanded:
        added = cmap.add_descendants(concept, system, parent, codes)
        report["expansions"].append({"concept": concept, "system": system, "is-a": parent,
                                     "codes": len(codes), "added": added,
                                     "incomplete": incomplete})
        report["codes_added"] += added
        if incomplete is not None:
            log.info("terminology: %s is-a %s incomplete (%s); deciding its codes one by "
                     "one", system, parent, incomplete)
            cmap.decide_by_server(concept, system, parent)
            open_entries += 1
    if open_entries:
        cmap.decider = CodeDecider(base, session, report, optional=optional)
    return report
