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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fhir_spine import schema
from fhir_spine.errors import UsageError
from fhir_spine.redact import scrub_frame, scrub_json
from fhir_spine.tables import Tables

MANIFEST = "manifest.json"
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
    """Refuse to replace a folder that is not a fhir-spine output (a user's files)."""
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"--out {target} exists and is not a folder")
        if any(target.iterdir()) and not (target / MANIFEST).is_file():
            raise UsageError(f"--out {target} is not empty and holds no {MANIFEST}; "
                             "refusing to replace it")


def publish(target: Path, build: Callable[[Path], None]) -> None:
    """Run `build(tmp_folder)` and swap the result in at `target`."""
    target = target.absolute()
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
        try:
            build(staging)
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
