"""Read FHIR R4 resources from a folder: Bulk Data NDJSON (optionally gzip) and JSON files
holding a Bundle or a single resource.

NDJSON is streamed line by line so a large export never sits in memory whole; a Bundle
file has to be parsed at once. Anything unreadable becomes a `ReadProblem` carrying its
origin (file and line), so the caller can account for it instead of losing it.

Containers are read the way a server reads them: a Bundle inside a Bundle (a document in
a collection) is unpacked too; `urn:uuid:` and conditional references
(`Patient?identifier=system|value`) between a Bundle's entries become `Type/id`. What a
Bulk Data client leaves beside the NDJSON (its `log.ndjson`, a saved export manifest) is
recognised as an export artefact: neither a resource read nor an error
(`sources.export_artefacts`); `FileSource.export_artefacts` keeps what it said.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson

from fhir_spine.errors import UsageError
from fhir_spine.issues import Severity
from fhir_spine.sources import conditional
from fhir_spine.sources.export_artefacts import (
    ExportArtefact,
    is_export_manifest,
    is_log_event,
    transaction_time,
)

log = logging.getLogger(__name__)

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")
# Bundles inside Bundles deeper than this are not unpacked (real documents-in-collections
# are one level deep; the limit keeps a hostile file from exhausting the stack).
MAX_BUNDLE_DEPTH = 8
# JSON nesting deeper than this in one resource is set aside as one `too-deep` row before
# anything walks it (real resources are well under 30 deep; 1,000 would exhaust the stack
# of every recursive reader after this one).
MAX_JSON_DEPTH = 64
# A plain NDJSON file larger than this is read as line-aligned byte ranges of about this
# size, each a unit of a parallel extraction (issue 16): a Bulk Data export is often one
# Observation file of hundreds of MB, which as one unit leaves every core but one idle.
# Fixed, not derived from `--jobs`, so the units (and all a worker computes) are the same
# for any N. Reading (parse, prefilter, views) runs at about 5 MB/s a core, so a 4 MiB
# range is about a second of work: a unit's own cost (its part pickled back, a newline
# count over its bytes when the units are made) stays in the noise, and even an 18 MB
# file gives two cores five units to share (at 32 MiB it would be one unit, no split).
RANGE_BYTES = 4 * 1024 * 1024
PLAIN_NDJSON_SUFFIXES = (".ndjson", ".jsonl")


@dataclass(frozen=True)
class ReadProblem:
    """Something read that is not a usable resource: one `issues` row, set aside.

    `severity` is `error` unless the input says otherwise (a search's OperationOutcome
    entry carries its own severity)."""

    origin: str
    code: str
    message: str
    resource_type: str = ""
    resource_id: str = ""
    severity: Severity = "error"


@dataclass(frozen=True)
class RawResource:
    """A resource and where it was read. `notes` are problems met while reading it that
    do not stop it being used (an unresolved conditional reference): each one is an
    `issues` row, but the resource is still counted once and goes on to the views."""

    resource: dict[str, Any]
    origin: str
    notes: tuple[ReadProblem, ...] = ()


SourceItem = RawResource | ReadProblem


@dataclass(frozen=True)
class FileUnit:
    """One unit of reading a folder: a whole file, or the lines of a plain NDJSON file from
    byte `start` (a line's first byte; that line is number `first_line` of the file) up to
    byte `end` (exclusive, just after a newline; None: to the end of the file).

    Reading a file's units in order gives exactly what reading it whole gives, origins
    (`file:line`) included. Only the first unit of a file can make it a client log
    (`may_be_log`): the units are made only after its first JSON line is known not to be
    a log event."""

    path: Path
    start: int = 0
    end: int | None = None
    first_line: int = 1

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None


def file_units(path: Path, range_bytes: int = RANGE_BYTES) -> list[FileUnit]:
    """`path` as reading units, in reading order: byte ranges of about `range_bytes`
    (bytes, > 0) ending at a newline when it is a plain NDJSON file larger than that, else
    one whole-file unit (gzip cannot seek; a JSON file is parsed at once; a file that
    cannot be opened, or an export client log, is reported or recognised whole).

    Each range's first line number is counted here (newlines of the bytes before it, one
    C-level `bytes.count` per range), so a worker can name `file:line` origins alone. A
    line longer than `range_bytes` stays in one range. Never raises: a file that cannot be
    read here is one whole unit, and reading it reports why."""
    whole = [FileUnit(path)]
    if not path.name.lower().endswith(PLAIN_NDJSON_SUFFIXES) or _unopenable(path) is not None:
        return whole
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size <= range_bytes or _starts_as_log(handle, range_bytes):
                return whole
            units: list[FileUnit] = []
            start, line = 0, 1
            while True:
                handle.seek(start)
                data = handle.read(range_bytes)
                rest = handle.readline()  # to the end of the line the range stops in
                if not rest.endswith(b"\n") or handle.tell() >= size:
                    units.append(FileUnit(path, start, None, line))
                    return units if len(units) > 1 else whole
                end = start + len(data) + len(rest)
                units.append(FileUnit(path, start, end, line))
                start, line = end, line + data.count(b"\n") + 1
    except OSError:
        return whole


def _starts_as_log(handle: IO[bytes], limit: int) -> bool:
    """Whether the first line of `handle` that is JSON is a client log event (the file is
    then an export log: one artefact, read whole); also True when no line of its first
    `limit` bytes is JSON (undecided: whole is always right)."""
    seen = 0
    for line in handle:
        seen += len(line)
        if line.strip():
            try:
                return is_log_event(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
        if seen >= limit:
            return True
    return True


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


def fhir_entries(folder: Path) -> list[Path]:
    """Every entry under `folder` named like a FHIR file, in a stable order, including
    those that cannot be opened (a dangling or looping link): those are `unreadable-file`
    rows, never skipped in silence. Folders named like files are left out."""
    return sorted(
        p for p in folder.rglob("*")
        if p.name.lower().endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not p.is_dir()
    )


def _unopenable(path: Path) -> str | None:
    """Why `path` cannot be read as a file, or None when it can be opened."""
    if path.is_file():
        return None
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "a symbolic link loop"
        except OSError as exc:
            if exc.errno == 40:  # ELOOP
                return "a symbolic link loop"
            return f"a dangling symbolic link to {path.readlink()}"
    return "not a regular file"


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON data nests deeper than `limit` (level by level, no recursion)."""
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for item in level:
            for child in (item.values() if isinstance(item, dict) else item):
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
    return False


def too_deep_problem(resource: dict[str, Any], origin: str) -> ReadProblem:
    rtype = str(resource.get("resourceType") or "")[:64]
    rid = str(resource.get("id") or "")[:64]
    return ReadProblem(origin, "too-deep",
                       f"{origin}: {rtype or 'resource'} nests deeper than {MAX_JSON_DEPTH} "
                       "levels; set aside unread", rtype, rid)


class FileSource:
    """A folder as source items, plus what its export artefacts said about it.

    Iterate it for the items. `export_artefacts` is filled while iterating: read it
    after the items are consumed (the manifest is written after the run)."""

    def __init__(self, folder: Path, *, range_bytes: int = RANGE_BYTES) -> None:
        self.folder = check_folder(folder)
        self.range_bytes = range_bytes
        self.export_artefacts: list[ExportArtefact] = []

    def __iter__(self) -> Iterator[SourceItem]:
        self.export_artefacts.clear()
        files = fhir_entries(self.folder)
        if not files:
            log.warning("no .ndjson or .json files found under %s", self.folder)
        for path in files:
            yield from iter_file(self.folder, path, self.export_artefacts)

    def files(self) -> list[Path]:
        """The folder's FHIR file entries in reading order, unopenable ones included
        (`iter_file` reads one: the unit of a parallel extraction, pipeline.extract_files)."""
        return fhir_entries(self.folder)

    def units(self) -> list[FileUnit]:
        """The folder's files as reading units (`file_units`), in file then byte order:
        `iter_file` over them in order gives what iterating the source gives."""
        return [unit for path in self.files() for unit in file_units(path, self.range_bytes)]

    @property
    def transaction_time(self) -> str | None:
        """The export's `transactionTime` from its artefacts, if the folder has any."""
        return transaction_time(self.export_artefacts)

    def query_info(self) -> dict[str, Any]:
        """Manifest `query` keys for a folder that came from a Bulk Data export, in the
        shape the bulk source uses (`transaction_time`); empty for a plain folder."""
        if not self.export_artefacts:
            return {}
        return {"kind": "bulk-export-folder", "transaction_time": self.transaction_time,
                "export_artefacts": [a.summary() for a in self.export_artefacts]}


def iter_file(folder: Path, path: Path | FileUnit, artefacts: list[ExportArtefact]
              ) -> Iterator[SourceItem]:
    """The items of one file of `folder`, or of one unit of it (`file_units`); its export
    artefacts are added to `artefacts`."""
    unit = path if isinstance(path, FileUnit) else FileUnit(path)
    path = unit.path
    name = str(path.relative_to(folder))
    if not unit.whole:
        yield from _iter_ndjson(path, name, unpack=True, artefacts=artefacts, unit=unit)
        return
    why = _unopenable(path)
    if why is not None:
        yield ReadProblem(name, "unreadable-file", f"cannot read {name}: {why}")
        return
    if path.name.lower().endswith(NDJSON_SUFFIXES):
        yield from _iter_ndjson(path, name, unpack=True, artefacts=artefacts)
        return
    try:
        yield from _iter_json(path, name, artefacts)
    except (OSError, EOFError) as exc:  # unreadable file, truncated gzip
        yield ReadProblem(name, "unreadable-file", f"cannot read {name}: {exc}")


def iter_folder(folder: Path) -> Iterator[SourceItem]:
    """The items of `folder` (see `FileSource`, which also keeps the export artefacts)."""
    yield from FileSource(folder)


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
    yield from _iter_ndjson(path, name, unpack=unpack, artefacts=None)


def _lines(handle: IO[bytes], unit: FileUnit | None
           ) -> Iterator[tuple[int, bytes]]:
    """(line number, line with its newline) of a whole file, or of one range of it."""
    if unit is None or unit.whole:
        yield from enumerate(handle, start=1)
        return
    handle.seek(unit.start)
    if unit.end is None:
        yield from enumerate(handle, start=unit.first_line)
        return
    data = handle.read(unit.end - unit.start)  # about RANGE_BYTES, read in one call
    yield from enumerate(io.BytesIO(data), start=unit.first_line)
    if len(data) < unit.end - unit.start:
        raise OSError(f"it ended at byte {unit.start + len(data)}, before byte "
                      f"{unit.end}: it changed while it was read")


def _iter_ndjson(path: Path, name: str, *, unpack: bool,
                 artefacts: list[ExportArtefact] | None,
                 unit: FileUnit | None = None) -> Iterator[SourceItem]:
    """`iter_ndjson_file`, plus, when reading a folder (`artefacts` given), what a Bulk
    Data client leaves beside the output:

    - a file whose first JSON line is a client log event is that client's log: its event
      lines go into one `ExportArtefact` instead of being read as (non-)resources; any
      other line in it is read as usual, so a resource is never hidden in a log;
    - an OperationOutcome line is an `error` file's message from the server: one issues
      row at its own severity with its text (`error`/`fatal`: data the server could not
      export), not a resource the pathway ignores in silence.
    """
    export_log: ExportArtefact | None = None
    first = unit is None or unit.start == 0  # a later range never starts a log
    try:
        with _open(path) as handle:
            for number, line in _lines(handle, unit):
                if not line.strip():
                    continue
                origin = f"{name}:{number}"
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield ReadProblem(origin, "malformed-json",
                                      f"{origin}: not valid JSON ({exc})")
                    continue
                if artefacts is not None and first and is_log_event(value):
                    export_log = ExportArtefact("client-log", name)
                    artefacts.append(export_log)
                first = False
                if export_log is not None and is_log_event(value):
                    export_log.add_event(value)
                    continue
                if not unpack and isinstance(value, dict) \
                        and value.get("resourceType") == "Bundle":
                    yield RawResource(value, origin)
                    continue
                if artefacts is not None and isinstance(value, dict) \
                        and value.get("resourceType") == "OperationOutcome":
                    yield _outcome_problem(value, origin, "export error file")
                    continue
                yield from _resources_of(value, origin)
    except (OSError, EOFError) as exc:  # unreadable file, truncated gzip
        yield ReadProblem(name, "unreadable-file", f"cannot read {name}: {exc}")
    if export_log is not None:
        log.info("%s: Bulk Data client log, %d event(s), transactionTime %s", name,
                 export_log.events, ", ".join(export_log.transaction_times) or "none")
        if export_log.errors:
            log.warning("%s: the export log records %d error event(s), e.g. %s: the export "
                        "may be incomplete", name, len(export_log.errors),
                        export_log.errors[0])
        elif not export_log.complete:
            log.warning("%s: the export log has no export_complete event: the downloads "
                        "may not have finished", name)


def _iter_json(path: Path, name: str,
               artefacts: list[ExportArtefact] | None = None) -> Iterator[SourceItem]:
    """One JSON file (gzip or not, the same way as NDJSON): a Bundle, a resource, or a
    saved Bulk Data export manifest (an artefact, see `sources.export_artefacts`)."""
    with _open(path) as handle:
        data = handle.read()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield ReadProblem(name, "malformed-json", f"{name}: not valid JSON ({exc})")
        return
    if artefacts is not None and is_export_manifest(value):
        artefacts.append(ExportArtefact.from_manifest(name, value))
        log.info("%s: Bulk Data export manifest, transactionTime %s", name,
                 value.get("transactionTime"))
        return
    yield from _resources_of(value, name)


def _resources_of(value: Any, origin: str) -> Iterator[SourceItem]:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        yield ReadProblem(origin, "not-a-resource", f"{origin}: not a FHIR resource "
                          "(no resourceType)")
        return
    if value["resourceType"] == "Bundle":
        yield from _bundle_entries(value, origin)
    elif too_deep(value):
        yield too_deep_problem(value, origin)
    else:
        yield RawResource(value, origin)


def _bundle_entries(bundle: dict[str, Any], origin: str, *, depth: int = 0,
                    outer_aliases: dict[str, str] | None = None) -> Iterator[SourceItem]:
    """Unpack a Bundle as a server processes it.

    References between its entries become `Type/id`: `urn:uuid:` and other `fullUrl`s
    (the nearest Bundle's own entries first, then the enclosing Bundle's), and
    conditional references (`Type?search`) that match exactly one entry of this Bundle.
    A Bundle entry (a document inside a collection) is unpacked in turn. A search's
    OperationOutcome entry (`search.mode = outcome`) is the server talking, not data: one
    `issues` row at the outcome's own severity with its text.
    """
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        yield ReadProblem(origin, "invalid-bundle", f"{origin}: Bundle.entry is not a list")
        return
    searchset = bundle.get("type") == "searchset"
    own_aliases: dict[str, str] = {}
    resources: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        where = f"{origin}#entry[{index}]" if depth == 0 else f"{origin}.entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            request = entry.get("request") if isinstance(entry, dict) else None
            method = request.get("method") if isinstance(request, dict) else None
            yield ReadProblem(where, "not-a-resource",
                              f"{where}: bundle entry without a resource"
                              + (f" (request {method})" if method else ""))
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode == "outcome" or (searchset and resource["resourceType"] == "OperationOutcome"):
            yield _outcome_problem(resource, where, "search results")
            continue
        full_url = entry.get("fullUrl")
        if not resource.get("id"):
            derived = _id_from_entry(entry)
            if derived:
                resource = {**resource, "id": derived}
        if isinstance(full_url, str) and resource.get("id"):
            own_aliases[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append((where, resource))
    aliases = {**(outer_aliases or {}), **own_aliases}
    refs = _References(aliases, [r for _, r in resources if r["resourceType"] != "Bundle"])
    for where, resource in resources:
        if resource["resourceType"] != "Bundle":
            yield refs.rewrite(resource, where)
        elif depth + 1 > MAX_BUNDLE_DEPTH:
            yield ReadProblem(where, "bundle-too-deep",
                              f"{where}: Bundle nested more than {MAX_BUNDLE_DEPTH} deep; "
                              "not unpacked", "Bundle", str(resource.get("id") or ""))
        else:
            yield from _bundle_entries(resource, where, depth=depth + 1, outer_aliases=aliases)


def _id_from_entry(entry: dict[str, Any]) -> str | None:
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        return full_url.removeprefix("urn:uuid:")
    request = entry.get("request")
    url = request.get("url") if isinstance(request, dict) else None
    if isinstance(url, str) and "/" in url and "?" not in url:
        return url.rstrip("/").rsplit("/", 1)[-1]
    return None


class _TooDeep(Exception):
    """Nesting past MAX_JSON_DEPTH found while rewriting references."""


class _References:
    """Rewrites the references of one Bundle's resources to `Type/id`.

    An unresolved conditional reference is reported once per Bundle, on the first entry
    that uses it: Synthea-style Bundles repeat one `Practitioner?identifier=...` in
    hundreds of entries, and one problem is one row."""

    def __init__(self, aliases: dict[str, str], candidates: list[dict[str, Any]]) -> None:
        self.aliases = aliases
        self.candidates = candidates
        self.resolved: dict[str, conditional.Resolution] = {}  # one search per reference

    def rewrite(self, resource: dict[str, Any], where: str) -> SourceItem:
        """The resource with its references rewritten, or a too-deep problem.

        Rewritten in place, in the one walk that also checks the nesting limit
        (`too_deep`'s levels): the entry's parsed JSON belongs to this reader alone, and
        copying every element of every entry was a third of reading a Synthea Bundle
        (issue 16)."""
        unresolved: dict[str, conditional.Resolution] = {}
        try:
            self._walk(resource, unresolved, 1)
        except _TooDeep:
            return too_deep_problem(resource, where)
        rtype, rid = str(resource["resourceType"]), str(resource.get("id") or "")
        notes = tuple(_unresolved_note(ref, res, rtype, rid, where)
                      for ref, res in unresolved.items())
        return RawResource(resource, where, notes)

    def _walk(self, value: dict[str, Any] | list[Any],
              unresolved: dict[str, conditional.Resolution], depth: int) -> None:
        if depth > MAX_JSON_DEPTH:
            raise _TooDeep
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "reference" and isinstance(item, str):
                    target = self._target(item, unresolved)
                    if target is not item:
                        value[key] = target  # an existing key: safe while iterating
                elif isinstance(item, (dict, list)):
                    self._walk(item, unresolved, depth + 1)
        else:
            for item in value:
                if isinstance(item, (dict, list)):
                    self._walk(item, unresolved, depth + 1)

    def _target(self, reference: str, unresolved: dict[str, conditional.Resolution]) -> str:
        if reference in self.aliases:
            return self.aliases[reference]
        if not conditional.is_conditional(reference):
            return reference
        resolution = self.resolved.get(reference)
        if resolution is None:
            resolution = conditional.resolve(reference, self.candidates)
            self.resolved[reference] = resolution
            if resolution.outcome != "resolved":
                unresolved[reference] = resolution  # reported once, on its first user
        return resolution.target if resolution.outcome == "resolved" else reference


def _unresolved_note(reference: str, resolution: conditional.Resolution, rtype: str,
                     rid: str, where: str) -> ReadProblem:
    """An issues row for a conditional reference left as it is. Several matches is an
    error (two resources claim the same identity); no match, or a search this reader
    cannot run, is a warning (the target may be elsewhere; the reference is kept)."""
    left = "left unresolved here and in every other entry of the Bundle that uses it"
    if resolution.outcome == "several":
        return ReadProblem(where, "conditional-reference-ambiguous",
                           f"{rtype} refers to {reference!r}: {resolution.detail}; a server "
                           f"would reject the transaction; {left}", rtype, rid, "error")
    return ReadProblem(where, "conditional-reference-unresolved",
                       f"{rtype} refers to {reference!r}: {resolution.detail}; {left}",
                       rtype, rid, "warning")


_OUTCOME_SEVERITY: dict[str, Severity] = {
    "fatal": "error", "error": "error", "warning": "warning", "information": "info"}
_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}


def _outcome_problem(outcome: dict[str, Any], where: str, carrier: str) -> ReadProblem:
    """A server's OperationOutcome carried in the data (a search's `outcome` entry, a
    line of a Bulk Data `error` file) as one problem at its worst issue's severity
    (`fatal`/`error` -> error, `warning`, `information` -> info; unknown -> error) with
    every issue's text. Counted as read and set aside: it is in the input, it is no data."""
    severities: list[Severity] = []
    texts: list[str] = []
    issues = outcome.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        raw = issue.get("severity")
        severities.append(_OUTCOME_SEVERITY.get(raw, "error") if isinstance(raw, str)
                          else "error")
        raw_details = issue.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        raw_codings = details.get("coding")
        codings = raw_codings if isinstance(raw_codings, list) else []
        first = codings[0] if codings and isinstance(codings[0], dict) else {}
        text = (issue.get("diagnostics") or details.get("text") or first.get("display")
                or issue.get("code") or "no text")
        at = issue.get("expression") or issue.get("location")
        at = ", ".join(str(x) for x in at) if isinstance(at, list) else ""
        texts.append(f"{raw if isinstance(raw, str) else 'error'}: {text}"
                     + (f" (at {at})" if at else ""))
    severity = min(severities, key=_SEVERITY_RANK.__getitem__) if severities else "error"
    message = " ".join(f"{where}: server message in {carrier}: "
                       f"{'; '.join(texts) or 'OperationOutcome without issues'}".split())
    return ReadProblem(where, "operation-outcome", message[:1000], "OperationOutcome",
                       str(outcome.get("id") or ""), severity)
