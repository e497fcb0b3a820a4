"""`--terminology URL`: expand the intensional concepts (`is-a` entries of concepts.yaml, the
`is-a` filters of the ValueSets in profiles/valuesets/) against a FHIR terminology server.

Once per run, before any resource is read: for each `is-a` entry, `POST ValueSet/$expand`
with the one-include ValueSet `{system, filter: concept is-a CODE}`; every code of the
expansion becomes an exact entry of that concept (`ConceptMap.add_descendants`), so the run
itself never asks the server again (the answers are the run's cache, and workers of a
parallel run get them with the map). The manifest's `terminology` block records the server,
the code system versions the server says it used, and how many codes it added.

Without `--terminology` the offline entries (the parent code and the listed descendants)
are the expansion: no server is ever required.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from fhir_spine.concepts import ConceptMap
from fhir_spine.errors import ServerError, ServerUnreachable

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
TIMEOUT = 60
MAX_CODES = 10000


class TerminologyUnavailable(ServerUnreachable):
    pass


def _expand(session: requests.Session, base: str, system: str, parent: str
            ) -> tuple[list[str], set[str]]:
    value_set = {
        "resourceType": "ValueSet", "status": "active",
        "compose": {"include": [{"system": system, "filter": [
            {"property": "concept", "op": "is-a", "value": parent}]}]},
    }
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": value_set},
        {"name": "count", "valueInteger": MAX_CODES}]}
    url = f"{base}/ValueSet/$expand"
    try:
        r = session.post(url, json=body, timeout=TIMEOUT,
                         headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    except requests.RequestException as exc:
        raise TerminologyUnavailable(
            f"terminology server {base} unreachable: {type(exc).__name__}") from None
    if r.status_code != 200:
        raise ServerError(f"terminology server {base}: ValueSet/$expand of {system} is-a "
                          f"{parent} answered {r.status_code}", status=r.status_code)
    try:
        expansion = r.json().get("expansion") or {}
    except ValueError:
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
    return codes, versions


def apply(cmap: ConceptMap, base: str, *, optional: bool = False,
          session: requests.Session | None = None) -> dict[str, Any]:
    """Expand every `is-a` entry of `cmap` on the server at `base` and add the codes.

    Returns the manifest's `terminology` block. An unreachable or failing server raises
    (exit 4 / 5, one line) unless `optional`: then a warning, and the offline entries.
    """
    base = base.rstrip("/")
    session = session or requests.Session()
    report: dict[str, Any] = {"server": base, "used": True, "code_systems": {},
                              "expansions": [], "codes_added": 0, "warning": None}
    work = cmap.intensional()
    expanded: list[tuple[str, str, str, list[str]]] = []
    try:
        for concept, system, parent in work:
            codes, versions = _expand(session, base, system, parent)
            expanded.append((concept, system, parent, codes))
            report["code_systems"].setdefault(system, set()).update(versions)
    except (ServerUnreachable, ServerError) as exc:
        if not optional:
            raise
        message = f"{exc}; --terminology-optional: using the offline expansions"
        log.warning("%s", message)
        return {"server": base, "used": False, "code_systems": {}, "expansions": [],
                "codes_added": 0, "warning": message}
    for concept, system, parent, codes in expanded:
        added = cmap.add_descendants(concept, system, parent, codes)
        report["expansions"].append({"concept": concept, "system": system, "is-a": parent,
                                     "codes": len(codes), "added": added})
        report["codes_added"] += added
    report["code_systems"] = {k: sorted(v) for k, v in report["code_systems"].items()}
    return report
