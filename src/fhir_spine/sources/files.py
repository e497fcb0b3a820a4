"""Read FHIR R4 resources from a folder: Bulk Data NDJSON (optionally gzip) and JSON files
holding a Bundle or a single resource.

NDJSON is streamed line by line so a large export never sits in memory whole; a Bundle
file has to be parsed at once. Anything unreadable becomes a `ReadProblem` carrying its
origin (file and line), so the caller can account for it instead of losing it.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson

from fhir_spine.errors import UsageError

log = logging.getLogger(__name__)

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")


@dataclass(frozen=True)
class RawResource:
    resource: dict[str, Any]
    origin: str


@dataclass(frozen=True)
class ReadProblem:
    origin: str
    code: str
    message: str
    resource_type: str = ""
    resource_id: str = ""


SourceItem = RawResource | ReadProblem


def check_folder(path: Path) -> Path:
    """Fail with a one-line error (exit status 2) when the source cannot be read."""
    if not path.exists():
        raise UsageError(f"source folder {path} does not exist")
    if not path.is_dir():
        raise UsageError(f"source {path} is not a folder")
    try:
        next(path.iterdir(), None)
    except PermissionError:
        raise UsageError(f"source folder {path} is not readable (permission denied)") from None
    return path


def fhir_files(folder: Path) -> list[Path]:
    """FHIR files under `folder`, recursively, in a stable order."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.name.lower().endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def iter_folder(folder: Path) -> Iterator[SourceItem]:
    check_folder(folder)
    files = fhir_files(folder)
    if not files:
        log.warning("no .ndjson or .json files found under %s", folder)
    for path in files:
        name = str(path.relative_to(folder))
        if path.name.lower().endswith(NDJSON_SUFFIXES):
            yield from iter_ndjson_file(path, name)
            continue
        try:
            yield from _iter_json(path, name)
        except (OSError, EOFError) as exc:  # unreadable file, truncated gzip
            yield ReadProblem(name, "unreadable-file", f"cannot read {name}: {exc}")


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def iter_ndjson_file(path: Path, name: str, *, unpack: bool = True) -> Iterator[SourceItem]:
    """The lines of one NDJSON file (gzip or not) as source items, origin `name:line`.

    A Bundle on a line is unpacked into its entries, unless `unpack=False` (a Bulk Data
    `deleted` file is a Bundle per line and is read whole). An unreadable or truncated
    file ends in one `unreadable-file` problem after the lines read so far.
    """
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                origin = f"{name}:{number}"
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield ReadProblem(origin, "malformed-json",
                                      f"{origin}: not valid JSON ({exc})")
                    continue
                if not unpack and isinstance(value, dict) \
                        and value.get("resourceType") == "Bundle":
                    yield RawResource(value, origin)
                    continue
                yield from _resources_of(value, origin)
    except (OSError, EOFError) as exc:  # unreadable file, truncated gzip
        yield ReadProblem(name, "unreadable-file", f"cannot read {name}: {exc}")


def _iter_json(path: Path, name: str) -> Iterator[SourceItem]:
    with _open(path) as handle:
        data = handle.read()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield ReadProblem(name, "malformed-json", f"{name}: not valid JSON ({exc})")
        return
    yield from _resources_of(value, name)


def _resources_of(value: Any, origin: str) -> Iterator[SourceItem]:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        yield ReadProblem(origin, "not-a-resource", f"{origin}: not a FHIR resource "
                          "(no resourceType)")
        return
    if value["resourceType"] == "Bundle":
        yield from _bundle_entries(value, origin)
    else:
        yield RawResource(value, origin)


def _bundle_entries(bundle: dict[str, Any], origin: str) -> Iterator[SourceItem]:
    """Unpack a Bundle; resolve `urn:uuid:` references between its entries to `Type/id`,
    as a server does when it processes a transaction."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        yield ReadProblem(origin, "invalid-bundle", f"{origin}: Bundle.entry is not a list")
        return
    aliases: dict[str, str] = {}
    resources: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        where = f"{origin}#entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            method = ((entry or {}).get("request") or {}).get("method") if isinstance(
                entry, dict) else None
            yield ReadProblem(where, "not-a-resource",
                              f"{where}: bundle entry without a resource"
                              + (f" (request {method})" if method else ""))
            continue
        if (entry.get("search") or {}).get("mode") == "outcome":
            yield ReadProblem(where, "operation-outcome", f"{where}: OperationOutcome entry",
                              resource.get("resourceType", ""), str(resource.get("id", "")))
            continue
        full_url = entry.get("fullUrl")
        if not resource.get("id"):
            derived = _id_from_entry(entry)
            if derived:
                resource = {**resource, "id": derived}
        if isinstance(full_url, str) and resource.get("id"):
            aliases[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append((where, resource))
    for where, resource in resources:
        yield RawResource(_rewrite_references(resource, aliases) if aliases else resource, where)


def _id_from_entry(entry: dict[str, Any]) -> str | None:
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        return full_url.removeprefix("urn:uuid:")
    url = (entry.get("request") or {}).get("url")
    if isinstance(url, str) and "/" in url and "?" not in url:
        return url.rstrip("/").rsplit("/", 1)[-1]
    return None


def _rewrite_references(value: Any, aliases: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in aliases:
                out[key] = aliases[item]
            else:
                out[key] = _rewrite_references(item, aliases)
        return out
    if isinstance(value, list):
        return [_rewrite_references(v, aliases) for v in value]
    return value
