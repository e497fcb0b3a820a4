"""Run the official SQL on FHIR v2 conformance suite against this runner.

Usage::

    python -m fhir_spine.views.conformance [DIR]

``DIR`` defaults to ``$SOF_TESTS_DIR``.  Prints ``file: passed/total shareable``
per test file (plus the optional ``experimental`` cases for information) and
exits non-zero if any shareable case fails, or if no cases were found - a
missing suite must never look like a pass.

Comparison follows the suite's README: ``expect`` rows are compared ignoring row
order but with exact column sets; ``expectColumns`` must equal the view's column
order; ``expectError`` passes only if the runner raises a :class:`ViewError`
(any other exception is a runner bug and fails the case).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_spine.views.errors import ViewError
from fhir_spine.views.runner import compile_view

__all__ = ["Case", "CaseResult", "load_cases", "main", "run_case", "run_suite", "summarize"]

SHAREABLE = "shareable"


@dataclass(frozen=True)
class Case:
    """One conformance test together with the resources of its file."""

    file: str
    title: str
    tags: tuple[str, ...]
    test: Mapping[str, Any]
    resources: tuple[Mapping[str, Any], ...]

    @property
    def id(self) -> str:
        return f"{self.file}::{self.title}"

    @property
    def shareable(self) -> bool:
        return SHAREABLE in self.tags


@dataclass(frozen=True)
class CaseResult:
    case: Case
    passed: bool
    detail: str = ""


def load_cases(directory: str | Path) -> list[Case]:
    """All cases of every test file in ``directory`` (``tests.schema.json`` excluded)."""
    folder = Path(directory)
    cases = []
    for file in sorted(folder.glob("*.json")):
        if file.name == "tests.schema.json":
            continue
        suite = orjson.loads(file.read_bytes())
        file_tags = tuple(suite.get("tags") or ())
        resources = tuple(suite.get("resources") or ())
        for test in suite.get("tests") or ():
            tags = tuple(test.get("tags") or file_tags)
            cases.append(Case(file.name, str(test.get("title")), tags, test, resources))
    return cases


def _same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            _same_value(a, e) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        return set(actual) == set(expected) and all(
            _same_value(actual[k], expected[k]) for k in actual
        )
    return bool(actual == expected)


def _compare_rows(actual: Sequence[Mapping[str, Any]], expected: Sequence[Any]) -> str | None:
    """``None`` if the rows match as a multiset, else a description of the first difference."""
    if len(actual) != len(expected):
        return f"expected {len(expected)} rows, got {len(actual)}: {list(actual)!r}"
    remaining = list(expected)
    for row in actual:
        for i, candidate in enumerate(remaining):
            if _same_value(dict(row), candidate):
                del remaining[i]
                break
        else:
            return f"unexpected row {dict(row)!r}; unmatched expected rows {remaining!r}"
    return None


def run_case(case: Case) -> CaseResult:
    """Run one case; never raises."""
    test = case.test
    try:
        view = compile_view(test["view"])
        rows = list(view.run(case.resources))
    except ViewError as exc:
        if test.get("expectError"):
            return CaseResult(case, True, f"raised as expected: {exc}")
        return CaseResult(case, False, f"unexpected error: {exc}")
    except Exception as exc:  # a runner bug, never an acceptable outcome
        return CaseResult(case, False, f"runner crashed: {type(exc).__name__}: {exc}")
    if test.get("expectError"):
        return CaseResult(case, False, f"expected an error, got {len(rows)} rows")
    if "expectCount" in test:
        ok = len(rows) == test["expectCount"]
        return CaseResult(
            case, ok, "" if ok else f"expected {test['expectCount']} rows, got {len(rows)}"
        )
    problem = _compare_rows(rows, test.get("expect") or [])
    if problem is None and "expectColumns" in test:
        if list(view.column_names) != list(test["expectColumns"]):
            problem = f"columns {list(view.column_names)} != expected {test['expectColumns']}"
    if problem is None:
        for row in rows:
            if tuple(row) != view.column_names:
                problem = f"row keys {list(row)} not in declared order {list(view.column_names)}"
                break
    return CaseResult(case, problem is None, problem or "")


def run_suite(directory: str | Path) -> list[CaseResult]:
    """Run every case (shareable and not) found in ``directory``."""
    return [run_case(case) for case in load_cases(directory)]


def summarize(results: Sequence[CaseResult]) -> dict[str, dict[str, tuple[int, int]]]:
    """``{file: {"shareable": (passed, total), "other": (passed, total)}}``."""
    summary: dict[str, dict[str, tuple[int, int]]] = {}
    for result in results:
        group = "shareable" if result.case.shareable else "other"
        per_file = summary.setdefault(result.case.file, {"shareable": (0, 0), "other": (0, 0)})
        passed, total = per_file[group]
        per_file[group] = (passed + int(result.passed), total + 1)
    return summary


def format_summary(results: Sequence[CaseResult]) -> list[str]:
    """Human-readable report lines: one per file, then every failing shareable case."""
    lines = []
    for file, groups in summarize(results).items():
        passed, total = groups["shareable"]
        line = f"{file}: {passed}/{total} shareable"
        other_passed, other_total = groups["other"]
        if other_total:
            line += f" (optional: {other_passed}/{other_total})"
        lines.append(line)
    shareable = [r for r in results if r.case.shareable]
    passed = sum(r.passed for r in shareable)
    lines.append(f"TOTAL: {passed}/{len(shareable)} shareable")
    lines.extend(f"FAIL {r.case.id}: {r.detail}" for r in shareable if not r.passed)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a in {"-h", "--help"} for a in args):
        print(__doc__)
        return 2
    directory = args[0] if args else os.environ.get("SOF_TESTS_DIR")
    if not directory:
        print("conformance: give the suite folder as DIR or set SOF_TESTS_DIR", file=sys.stderr)
        return 2
    if not Path(directory).is_dir():
        print(f"conformance: suite folder {directory} does not exist", file=sys.stderr)
        return 2
    results = run_suite(directory)
    for line in format_summary(results):
        print(line)
    shareable = [r for r in results if r.case.shareable]
    if not shareable:
        print(f"conformance: no shareable cases found in {directory}", file=sys.stderr)
        return 1
    return 0 if all(r.passed for r in shareable) else 1


if __name__ == "__main__":
    raise SystemExit(main())
