"""The SQL on FHIR v2 conformance suite, one pytest case per shareable test.

The suite lives outside the repository, at ``<repo>/../shared/sof-tests`` unless
``SOF_TESTS_DIR`` points elsewhere.  A missing suite is a failure, not a skip:
silently skipping would let a broken runner look conformant.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fhir_spine.views.conformance import Case, format_summary, load_cases, run_case, run_suite

REPO = Path(__file__).resolve().parents[1]
SUITE_DIR = Path(os.environ.get("SOF_TESTS_DIR") or REPO.parent / "shared" / "sof-tests")
MISSING = (
    f"SQL on FHIR conformance suite not found at {SUITE_DIR}; "
    "put it at <repo>/../shared/sof-tests or set SOF_TESTS_DIR"
)


def _shareable_cases() -> list[Case | None]:
    if not SUITE_DIR.is_dir():
        return [None]
    return [case for case in load_cases(SUITE_DIR) if case.shareable] or [None]


CASES = _shareable_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id if c else "suite-missing" for c in CASES])
def test_conformance_case(case: Case | None) -> None:
    if case is None:
        pytest.fail(MISSING if not SUITE_DIR.is_dir() else f"no shareable cases in {SUITE_DIR}")
    result = run_case(case)
    assert result.passed, f"{case.id}: {result.detail}"


def test_conformance_summary() -> None:
    """All shareable cases pass; prints ``file: passed/total shareable`` per file."""
    if not SUITE_DIR.is_dir():
        pytest.fail(MISSING)
    results = run_suite(SUITE_DIR)
    lines = format_summary(results)
    print("\n" + "\n".join(lines))
    shareable = [r for r in results if r.case.shareable]
    assert len(shareable) >= 100, f"suspiciously few shareable cases ({len(shareable)})"
    assert all(r.passed for r in shareable), "\n".join(lines)
