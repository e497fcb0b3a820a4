"""Reading the files an export hands over: line counts (checked against the manifest's
`count`), `error` files and `deleted` files.

Error-file OperationOutcomes with severity error/fatal become `ReadProblem` items (one
`issues` row each: data the server could not export); warnings and information become
messages, logged and listed in the manifest (`query.server_messages`), since they do not
mean data is missing.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

from fhir_spine.fhir import Key, reference_key
from fhir_spine.sources.files import RawResource, ReadProblem, iter_ndjson_file
from fhir_spine.sources.http import outcome_text

log = logging.getLogger(__name__)


def file_stem(index: int, label: str) -> str:
    """`0003.Observation`: the manifest's order, then a file-name-safe type."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label) or "file"
    return f"{index:04d}.{safe}"


def count_lines(path: Path) -> int:
    """Non-blank lines (resources) of an NDJSON file, gzip or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def read_error_file(path: Path, name: str) -> tuple[list[ReadProblem], list[str]]:
    """An `error` file: error/fatal issues -> ReadProblems; warnings -> messages."""
    problems: list[ReadProblem] = []
    messages: list[str] = []
    for item in iter_ndjson_file(path, name):
        if isinstance(item, ReadProblem):
            problems.append(item)
            continue
        resource = item.resource
        if resource.get("resourceType") != "OperationOutcome":
            problems.append(ReadProblem(item.origin, "bulk-export-error",
                                        f"{item.origin}: error file holds a "
                                        f"{resource.get('resourceType')}, not an "
                                        "OperationOutcome"))
            continue
        for issue in resource.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            text = outcome_text({"resourceType": "OperationOutcome", "issue": [issue]})
            if issue.get("severity") in ("error", "fatal"):
                problems.append(ReadProblem(item.origin, "bulk-export-error",
                                            f"the server could not export: {text}"))
            else:
                messages.append(text)
    return problems, messages


def read_deleted_file(path: Path, name: str) -> list[Key]:
    """A `deleted` file (Bulk v2 with `_since`): Bundles of `DELETE Type/id` entries."""
    keys: list[Key] = []
    for item in iter_ndjson_file(path, name, unpack=False):
        if not isinstance(item, RawResource):
            log.warning("deleted file: %s", item.message)
            continue
        for entry in item.resource.get("entry") or []:
            request = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(request, dict) or request.get("method") != "DELETE":
                continue
            key = reference_key(str(request.get("url") or ""))
            if key is not None:
                keys.append(key)
    return keys
