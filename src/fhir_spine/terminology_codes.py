"""Per-code terminology decisions: is this code a descendant of an `is-a` parent?

Used for an `is-a` entry whose `$expand` was incomplete (terminology.py: `expansion.total`
above the codes returned, the expansion cap reached, or the server refusing the expansion):
the codes of the data that the concept map does not know are then asked one by one, once
per run for each distinct (system, is-a parent, code):

1. `GET CodeSystem/$subsumes?system=S&codeA=PARENT&codeB=CODE` (FHIR R4 CodeSystem
   operations): outcome `subsumes` or `equivalent` is a member; `subsumed-by` and
   `not-subsumed` are not.
   Another 4xx answer is about the code asked (HAPI 8.8: 400 "Unknown code" for a code its
   CodeSystem does not hold; FHIR: codeA and codeB must be in the code system), so the
   code is no known descendant: not a member, counted in `codes_unknown` as well.
2. `POST ValueSet/$validate-code` of the one-include ValueSet `{system, filter: concept is-a
   PARENT}` (the `valueSet` parameter) with `system` and `code`: `result` true is a member.
   Asked once the server said it has no `$subsumes` (404, 405, 501, an OperationOutcome of
   code `not-supported` or saying it does not know the operation), for that code and every
   further one. (HAPI 8.8 offers `$subsumes` but refuses an inline `valueSet` here: 400
   "Either ValueSet ID or ... must be provided".)

`ConceptMap.lookup` calls `CodeDecider.member` only for a coding that no entry matches and
whose system has an incomplete `is-a` entry in that element group, so a code the map knows
and every code of another system never cause a request. Lookups happen in the parent
process (pipeline.py: `_finish` maps the merged rows), so the answers, and the counts in
the manifest, are the same whatever `--jobs` is.

A single-code call that fails (unreachable, 5xx, an answer of the wrong shape) is an error
(exit 4 / 5, one line) unless `--terminology-optional`: then a warning, the code counted as
not a member, and a `terminology-undecided` warning row in `issues` naming the code.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from fhir_spine.errors import ServerError, ServerUnreachable
from fhir_spine.issues import Issue

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
TIMEOUT = 60
SUBSUMES = "$subsumes"
VALIDATE_CODE = "$validate-code"
MEMBER_OUTCOMES = frozenset({"subsumes", "equivalent"})
# What a server says when it does not offer an operation at all (HAPI: "does not know how to
# handle"), as opposed to a 4xx about the one code asked.
_NO_OPERATION_STATUS = frozenset({404, 405, 501})
_NO_OPERATION_TEXT = ("not-supported:", "does not know how to handle", "unknown operation",
                      "not supported", "not implemented")


class TerminologyUnavailable(ServerUnreachable):
    pass


def request(session: requests.Session, method: str, url: str, base: str, what: str,
            **kwargs: Any) -> requests.Response:
    """One request to the terminology server; unreachable -> `TerminologyUnavailable`."""
    try:
        return session.request(method, url, timeout=TIMEOUT,
                               headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
                               **kwargs)
    except requests.RequestException as exc:
        raise TerminologyUnavailable(
            f"terminology server {base} unreachable ({what}): {type(exc).__name__}") from None


def outcome_text(response: requests.Response) -> str:
    """`issue code: first line of the diagnostics or text` of an OperationOutcome answer
    (at most 300 characters; "" when the body is no OperationOutcome)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            first = str(text).splitlines()[0] if text else ""
            return f"{issue.get('code') or 'issue'}: {first}"[:300]
    return "OperationOutcome"


def is_a_value_set(system: str, parent: str) -> dict[str, Any]:
    """The one-include ValueSet `{system, filter: concept is-a parent}`."""
    return {"resourceType": "ValueSet", "status": "active",
            "compose": {"include": [{"system": system, "filter": [
                {"property": "concept", "op": "is-a", "value": parent}]}]}}


def _parameters(response: requests.Response, base: str, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ServerError(f"terminology server {base}: {what} answer is not JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise ServerError(f"terminology server {base}: {what} answer is not a Parameters "
                          "resource")
    out: dict[str, Any] = {}
    for p in body.get("parameter") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            out.setdefault(p["name"], value)
    return out


class CodeDecider:
    """Asks the server whether a code is in an `is-a` parent's hierarchy; the run's cache.

    `report` is the manifest's `terminology` block: its per-code counts (`codes_decided`,
    `codes_member`, `codes_not_member` and of these `codes_unknown` and `codes_failed`,
    `requests`, `operations`: answers per operation) and
    `code_systems` are updated in place as codes are decided. `issues` holds the
    `terminology-undecided` rows of failed calls (`--terminology-optional`) not yet taken by
    `take_issues`.
    """

    def __init__(self, base: str, session: requests.Session, report: dict[str, Any], *,
                 optional: bool) -> None:
        self.base = base
        self.session = session
        self.report = report
        self.optional = optional
        self.cache: dict[tuple[str, str, str], bool] = {}
        self.subsumes_offered = True  # until the server says it has no $subsumes
        self.issues: list[Issue] = []
        for key in ("codes_decided", "codes_member", "codes_not_member", "codes_unknown",
                    "codes_failed", "requests"):
            report.setdefault(key, 0)
        report.setdefault("operations", {})

    def member(self, system: str, parent: str, code: str) -> bool:
        """Whether `code` is `parent` or one of its descendants in `system`."""
        if code == parent:  # HAPI answers not-subsumed for equal codes; FHIR: equivalent
            return True
        key = (system, parent, code)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            answer = self._ask(system, parent, code)
        except (ServerUnreachable, ServerError) as exc:
            if not self.optional:
                raise
            answer = False
            self.report["codes_failed"] += 1
            message = (f"{exc}; --terminology-optional: {system}|{code} counted as not in "
                       f"is-a {parent}")
            log.warning("%s", message)
            self.issues.append(Issue("warning", "terminology-undecided", message))
        self.cache[key] = answer
        self.report["codes_decided"] += 1
        self.report["codes_member" if answer else "codes_not_member"] += 1
        return answer

    def take_issues(self) -> list[Issue]:
        """The issue rows of failed calls since the last call (one extraction's)."""
        out, self.issues = self.issues, []
        return out

    def _ask(self, system: str, parent: str, code: str) -> bool:
        if self.subsumes_offered:
            r = self._call("GET", "CodeSystem/$subsumes", SUBSUMES,
                           params={"system": system, "codeA": parent, "codeB": code})
            if r.status_code == 200:
                outcome = _parameters(r, self.base, SUBSUMES).get("outcome")
                if not isinstance(outcome, str):
                    raise ServerError(f"terminology server {self.base}: {SUBSUMES} of "
                                      f"{system}|{code} gave no outcome")
                self._answered(SUBSUMES)
                return outcome in MEMBER_OUTCOMES
            text = outcome_text(r)
            if r.status_code in _NO_OPERATION_STATUS or any(
                    t in text.lower() for t in _NO_OPERATION_TEXT):
                self.subsumes_offered = False
                log.info("terminology server %s has no %s: asking %s", self.base, SUBSUMES,
                         VALIDATE_CODE)
            elif 400 <= r.status_code < 500 and r.status_code not in (401, 403):
                log.debug("%s %s|%s: %s %s", SUBSUMES, system, code, r.status_code, text)
                self.report["codes_unknown"] += 1
                self._answered(SUBSUMES)
                return False
            else:
                raise ServerError(f"terminology server {self.base}: {SUBSUMES} of "
                                  f"{system}|{code} answered {r.status_code}"
                                  + (f" ({text})" if text else ""), status=r.status_code)
        return self._validate_code(system, parent, code)

    def _validate_code(self, system: str, parent: str, code: str) -> bool:
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "valueSet", "resource": is_a_value_set(system, parent)},
            {"name": "system", "valueUri": system},
            {"name": "code", "valueCode": code}]}
        r = self._call("POST", "ValueSet/$validate-code", VALIDATE_CODE, json=body)
        if r.status_code != 200:
            text = outcome_text(r)
            raise ServerError(f"terminology server {self.base}: {VALIDATE_CODE} of "
                              f"{system}|{code} answered {r.status_code}"
                              + (f" ({text})" if text else ""), status=r.status_code)
        params = _parameters(r, self.base, VALIDATE_CODE)
        result = params.get("result")
        if not isinstance(result, bool):
            raise ServerError(f"terminology server {self.base}: {VALIDATE_CODE} of "
                              f"{system}|{code} gave no result")
        version = params.get("version")
        if isinstance(version, str) and version:
            versions = self.report.setdefault("code_systems", {}).setdefault(system, [])
            if version not in versions:
                versions.append(version)
                versions.sort()
        self._answered(VALIDATE_CODE)
        return result

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        self.report["requests"] += 1
        return request(self.session, method, f"{self.base}/{path}", self.base, what, **kwargs)

    def _answered(self, operation: str) -> None:
        ops = self.report["operations"]
        ops[operation] = ops.get(operation, 0) + 1
