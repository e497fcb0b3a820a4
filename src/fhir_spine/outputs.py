"""Write an output folder atomically: a finished folder appears whole or not at all.

The folder is built beside the target, then swapped in with one `renameat2(...,
RENAME_EXCHANGE)` call where Linux offers it, so a reader sees the old dataset or the new
one, never a mix; elsewhere two renames leave a moment with no folder, never a partial
one. Outputs are health data: folders are created 0700 and files 0600.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fhir_spine import schema
from fhir_spine.errors import EmptyResult, ShrinkRefused, UsageError
from fhir_spine.redact import scrub_frame, scrub_json
from fhir_spine.tables import Tables

MANIFEST = "manifest.json"
REPORT_DIR = "report"
_RENAME_EXCHANGE = 2


def write_table(df: pd.DataFrame, folder: Path, name: str, *, csv: bool = True) -> None:
    df = scrub_frame(df)  # no secret in any table, whatever a server echoed into the data
    df.to_parquet(folder / f"{name}.parquet", index=False)
    if csv:
        out = df.copy()
        for col in out.columns:
            if str(out[col].dtype) == "boolean":
                out[col] = out[col].map({True: "true", False: "false"}).astype("string")
        out.to_csv(folder / f"{name}.csv", index=False, lineterminator="\n")


def write_dataset(tables: Tables, manifest: dict[str, Any], folder: Path, *,
                  csv: bool = True) -> None:
    for name, df in tables.items():
        write_table(df, folder, name, csv=csv)
    codebook = pd.DataFrame(schema.codebook_rows())
    write_table(codebook, folder, "codebook", csv=True)
    manifest = {**manifest, "rows": {name: int(len(df)) for name, df in tables.items()}}
    manifest = scrub_json(json.loads(json.dumps(manifest, default=str)))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def check_target(target: Path) -> None:
    """Refuse to replace a folder that is not a fhir-spine dataset (a user's files).

    Replacing deletes the folder, so it must prove what it is: its `manifest.json` names
    the tool and a schema version, and it holds nothing a dataset does not (the tables
    the manifest lists, the codebook, `report/`). An empty folder is fine."""
    if not target.exists():
        return
    if not target.is_dir():
        raise UsageError(f"--out {target} exists and is not a folder; choose a new folder")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    manifest = _read_manifest(target)
    if manifest is None or manifest.get("tool") != "fhir-spine" \
            or not isinstance(manifest.get("schema_version"), int):
        raise UsageError(f"--out {target} is not a fhir-spine dataset (no {MANIFEST} naming "
                         "fhir-spine and a schema version); refusing to replace it: choose "
                         "an empty or new folder")
    foreign = [name for name in entries if name not in dataset_entries(manifest)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                          if len(foreign) > 3 else "")
        raise UsageError(f"--out {target} holds files a fhir-spine dataset does not "
                         f"({shown}); refusing to replace it: move them or choose another "
                         "folder")


def dataset_entries(manifest: dict[str, Any]) -> set[str]:
    """Names a published dataset folder may hold, by what its manifest says it wrote."""
    rows = manifest.get("rows")
    tables = set(rows) if isinstance(rows, dict) else set()
    tables.add("codebook")
    names = {MANIFEST, REPORT_DIR}
    for table in tables:
        names.update({f"{table}.parquet", f"{table}.csv"})
    return names


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_apart(out: Path, **others: Path | None) -> None:
    """Refuse an `--out` that equals, contains or lies inside a folder the run reads or
    keeps (the source, a Bulk job folder, the refresh state): replacing `--out` would
    delete it, or the next run would read its own output."""
    mine = out.absolute().resolve()
    for label, other in others.items():
        if other is None:
            continue
        theirs = other.absolute().resolve()
        name = "--" + label.replace("_", "-")
        if mine == theirs or theirs.is_relative_to(mine):
            raise UsageError(f"--out {out} would replace {name} {other}, which it holds; "
                             "choose an --out outside it")
        if mine.is_relative_to(theirs):
            raise UsageError(f"--out {out} lies inside {name} {other}; choose an --out "
                             "outside it (the next run would read its own output)")


@dataclass(frozen=True)
class PublishPolicy:
    """What a publish must check and add, set by the command line for the whole run (the
    refresh publishes from deep inside its run, so this travels in a context variable)."""

    allow_empty: bool = False
    allow_shrink: bool = True      # only scheduled runs (refresh) guard against shrinking
    min_share: float = 0.5         # of the published dataset's screened patients
    report: bool = False           # regenerate report/ inside the new dataset
    warnings: tuple[str, ...] = ()  # added to the new manifest's `warnings`


_policy: ContextVar[PublishPolicy | None] = ContextVar("publish_policy", default=None)


@contextlib.contextmanager
def publish_policy(policy: PublishPolicy) -> Iterator[None]:
    token = _policy.set(policy)
    try:
        yield
    finally:
        _policy.reset(token)


def guard(staging: Path, target: Path, policy: PublishPolicy) -> None:
    """Refuse to publish a blank dataset, or one far smaller than the one it replaces."""
    new = _read_manifest(staging) or {}
    screened = int((new.get("rows") or {}).get("patients", 0))
    read = (new.get("accounting") or {}).get("read")
    if not policy.allow_empty and (screened == 0 or read == 0):
        what = "no resource was read (no FHIR files, or a cohort search that matched " \
            "nothing)" if read == 0 else "no patient was screened"
        raise EmptyResult(f"{what}; nothing published, {target} left as it was (check the "
                          "source or the index-procedure codes with `fhir-spine check`; "
                          "--allow-empty publishes an empty dataset)")
    old = _read_manifest(target) if target.is_dir() else None
    before = int((old or {}).get("rows", {}).get("patients", 0) or 0)
    if not policy.allow_shrink and before and screened < policy.min_share * before:
        raise ShrinkRefused(f"{screened} patients screened, {before} in the published "
                            f"dataset (below {policy.min_share:.0%}); nothing published, "
                            f"{target} left as it was (--allow-shrink publishes it)")


def annotate(staging: Path, policy: PublishPolicy) -> None:
    """Add the run's publish-time warnings to the new manifest."""
    if not policy.warnings:
        return
    manifest = _read_manifest(staging) or {}
    manifest["warnings"] = [*manifest.get("warnings", []), *policy.warnings]
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def build_report(staging: Path, target: Path) -> None:
    """Write report/ inside the new dataset, so it is swapped in with it (named after
    `target`, where it will be read, not the staging folder)."""
    from dataclasses import replace

    from fhir_spine.report.build import write_report
    from fhir_spine.report.data import load_cohort

    write_report(replace(load_cohort(staging), source=target), staging / REPORT_DIR)


def check_report_target(target: Path) -> None:
    """Refuse to replace a folder that is not a fhir-spine report (the report's own
    `manifest.json` says so and lists every file it wrote)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise UsageError(f"{target} exists and is not a folder; choose a new report folder")
    entries = {p.name for p in target.iterdir()}
    if not entries:
        return
    manifest = _read_manifest(target) or {}
    listed = {str(f).split("/", 1)[0] for f in manifest.get("files", [])}
    if manifest.get("kind") != "fhir-spine report" or not entries <= listed | {MANIFEST}:
        raise UsageError(f"{target} is not a fhir-spine report folder (or holds other "
                         "files); refusing to replace it: choose an empty or new folder")


def publish(target: Path, build: Callable[[Path], None], *, kind: str = "dataset") -> None:
    """Run `build(tmp_folder)` and swap the result in at `target`: a dataset (guarded by
    the run's `PublishPolicy`) or a report (`kind="report"`)."""
    target = target.absolute()
    dataset = kind == "dataset"
    (check_target if dataset else check_report_target)(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
        try:
            build(staging)
            if dataset:
                policy = _policy.get() or PublishPolicy()
                guard(staging, target, policy)
                annotate(staging, policy)
                if policy.report:
                    build_report(staging, target)
            _swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        os.umask(old_umask)


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old dataset
        return
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                              ctypes.c_uint]
        at_fdcwd = -100
        rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
        return rc == 0
    return False
