"""`fhir-spine check --server URL`: can this server give us what `extract --server` needs?

Run before the first pull at a site. It reads the CapabilityStatement and the SMART
configuration, lists each resource type and search parameter the REST pull uses with
whether the server declares it, says whether Bulk Data `$export` is offered, and makes
one real search for the index-procedure codes so that credentials, TLS and the network
path are proven too. It exits non-zero, naming what is missing, when the extraction
could not work.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.cli.server_options import add_http_options
from fhir_spine.errors import ExitCode, ServerError
from fhir_spine.fhir import BY_ID_TYPES, OPTIONAL_TYPES, pulled_types
from fhir_spine.redact import redact_url

if TYPE_CHECKING:
    from fhir_spine.sources.capabilities import Capabilities
    from fhir_spine.sources.http import FhirClient

# Parameters every resource has by the FHIR specification; servers often leave them out
# of the CapabilityStatement, so an undeclared one is assumed rather than failed.
COMMON_PARAMS = frozenset({"_id", "_lastUpdated"})


@dataclass
class TypeCheck:
    resource_type: str
    declared: bool
    searchable: bool
    params: dict[str, str] = field(default_factory=dict)  # name -> "yes" | "assumed" | "NO"


def needed_params(resource_type: str) -> tuple[str, ...]:
    """Search parameters the REST pull sends for a type (`_lastUpdated` for cap windows)."""
    if resource_type in BY_ID_TYPES:
        return ("_id", "_lastUpdated")
    if resource_type == "Procedure":
        return ("patient", "code", "_lastUpdated")
    return ("patient", "_lastUpdated")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "check", help="check that a FHIR server offers what extract --server needs",
        description="Read /metadata and .well-known/smart-configuration, list the resource "
        "types and search parameters the REST pull needs and whether each is supported, "
        "whether $export is offered, and try one search for the index-procedure codes. "
        "Exits 5 when something the extraction needs is missing.",
    )
    p.add_argument("--server", required=True, help="FHIR base URL, e.g. https://host/fhir")
    p.add_argument("--mappings", type=Path,
                   help="site mappings folder (index-procedure codes, view types)")
    add_http_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fhir_spine.cli.server_options import client_from_args
    from fhir_spine.settings import load_mappings

    mappings = load_mappings(args.mappings)
    client = client_from_args(args)
    try:
        return _check(client, mappings, out=print)
    finally:
        client.close()


def _check(client: FhirClient, mappings: Any, out: Any) -> int:
    from fhir_spine.sources.capabilities import read_capabilities
    from fhir_spine.sources.http import one_line
    from fhir_spine.sources.rest import INDEX_CONCEPT, index_code_tokens

    problems: list[str] = []
    caps = read_capabilities(client, r4_only=False)
    version = caps.fhir_version or "?"
    out(f"server        {redact_url(client.base_url)}")
    out(f"software      {caps.software}")
    out(f"FHIR version  {version}  {'ok' if caps.is_r4 else 'NOT R4: fhir-spine reads 4.0.x'}")
    if not caps.is_r4:
        problems.append(f"FHIR version {version} (need 4.0.x)")

    smart = _smart(client)
    out(f"SMART         {smart}")
    levels = [level.capitalize() if level != "system" else level
              for level in caps.export_levels]
    out(f"$export       {', '.join(levels) if levels else 'not offered'}")
    out(f"transaction   {'yes' if 'transaction' in caps.interactions else 'not declared'} "
        "(used by `fhir-spine load`)")

    checks = [_type_check(caps, t) for t in pulled_types(mappings)]
    out("")
    out(f"{'resource type':<26} {'search':<7} parameters")
    for c in checks:
        params = ", ".join(f"{k} {v}" for k, v in c.params.items())
        search = "yes" if c.searchable else ("NO" if c.declared else "ABSENT")
        if c.resource_type in OPTIONAL_TYPES:
            offered = c.declared and c.searchable and "NO" not in c.params.values()
            out(f"{c.resource_type:<26} {search:<7} "
                + (params if offered else "optional: not read from this server"))
            continue
        out(f"{c.resource_type:<26} {search:<7} {params}")
        if not c.declared:
            problems.append(f"{c.resource_type} (not in the CapabilityStatement)")
        elif not c.searchable:
            problems.append(f"{c.resource_type} search (search-type interaction)")
        for name, state in c.params.items():
            if state == "NO" and name != "_lastUpdated":
                problems.append(f"{c.resource_type}?{name}")
    if any(c.params.get("_lastUpdated") == "NO" for c in checks):
        out("note: _lastUpdated is needed only when a search hits a server paging cap")

    out("")
    tokens = index_code_tokens(mappings, INDEX_CONCEPT)
    out(f"index codes   {len(tokens)} codes of concept {INDEX_CONCEPT!r}:")
    for token in tokens:
        out(f"                {token}")
    found_none = False
    try:
        count = _count_candidates(client, tokens)
        out(f"search        Procedure?code=<index codes>: {count}")
        found_none = count in ("0 matching procedures", "no matching procedure")
        if found_none:
            _no_candidates(client, out)
    except ServerError as exc:
        reason = str(exc)
        if reason.startswith("GET "):  # the long URL is the search shown just above
            reason = reason.split(": ", 1)[-1]
        out(f"search        FAILED: {one_line(reason, 300)}")
        problems.append("a search for the index-procedure codes")
    out("")
    if problems:
        raise ServerError("the server lacks what extract --server needs: " + "; ".join(problems))
    if found_none:
        out("result        WARNING: the server offers what extract --server needs, but the "
            "cohort search found no procedure: extract would publish nothing (exit 10)")
    else:
        out("result        ok: the server offers everything extract --server needs")
    from fhir_spine.summary import note

    note(problems=0, cohort_search_empty=found_none)
    return int(ExitCode.OK)


SAMPLE = 200  # Procedures read to show what the server calls its procedures


def _no_candidates(client: FhirClient, out: Any) -> None:
    """The cohort search found nothing: warn, and show the server's most frequent
    Procedure codes in one bounded page, so a site sees what to map."""
    import logging
    from collections import Counter

    logging.getLogger(__name__).warning(
        "the cohort search (Procedure?code=<index codes>) found no procedure; add the "
        "site's biopsy codes to concepts.yaml (--mappings) before extracting")
    try:
        bundle = client.fetch_json("Procedure", params=[("_count", str(SAMPLE)),
                                                        ("_elements", "code")])
    except ServerError as exc:
        out(f"sample        could not read Procedures: {exc}")
        return
    codes: Counter[tuple[str, str, str]] = Counter()
    entries = [e.get("resource") or {} for e in bundle.get("entry") or []]
    for resource in entries:
        for coding in (resource.get("code") or {}).get("coding") or []:
            codes[(str(coding.get("system") or ""), str(coding.get("code") or ""),
                   str(coding.get("display") or ""))] += 1
    if not codes:
        out(f"sample        no Procedure codes in {len(entries)} Procedure(s) read")
        return
    out(f"sample        most frequent Procedure codes in {len(entries)} read (map the "
        "biopsy ones to 'vertebral-biopsy' in concepts.yaml):")
    for (system, code, display), n in codes.most_common(10):
        out(f"                {n:>4}  {system}|{code}" + (f"  {display}" if display else ""))


def _smart(client: FhirClient) -> str:
    from fhir_spine.sources.http import one_line

    try:
        config = client.fetch_json(".well-known/smart-configuration", authenticated=False,
                                   accept="application/json")
    except ServerError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            return f"not offered (.well-known/smart-configuration: {exc.status})"
        return f"unreadable ({one_line(str(exc), 200)})"
    endpoint = config.get("token_endpoint")
    methods = config.get("token_endpoint_auth_methods_supported") or []
    algs = config.get("token_endpoint_auth_signing_alg_values_supported") or []
    backend = "private_key_jwt" in methods
    parts = [f"token endpoint {redact_url(str(endpoint)) if endpoint else 'MISSING'}",
             "backend services (private_key_jwt) " + ("yes" if backend else "not listed")]
    if algs:
        parts.append("signing " + ", ".join(str(a) for a in algs))
    return "; ".join(parts)


def _type_check(caps: Capabilities, resource_type: str) -> TypeCheck:
    support = caps.types.get(resource_type)
    if support is None:
        return TypeCheck(resource_type, False, False,
                         {p: "NO" for p in needed_params(resource_type)})
    declared = caps.search_params_of(resource_type)
    params = {}
    for name in needed_params(resource_type):
        if name in declared:
            params[name] = "yes"
        elif name in COMMON_PARAMS:
            params[name] = "assumed"
        else:
            params[name] = "NO"
    return TypeCheck(resource_type, True, "search-type" in support.interactions, params)


def _count_candidates(client: FhirClient, tokens: list[str]) -> str:
    params = [("code", ",".join(tokens))]
    try:
        bundle = client.fetch_json("Procedure", params=params + [("_summary", "count")])
        if isinstance(bundle.get("total"), int):
            return f"{bundle['total']} matching procedures"
    except ServerError as exc:
        if exc.status != 400:
            raise
    bundle = client.fetch_json("Procedure", params=params + [("_count", "1")])
    if isinstance(bundle.get("total"), int):
        return f"{bundle['total']} matching procedures"
    return "at least one matching procedure" if bundle.get("entry") else "no matching procedure"
