"""Issue 14, report items: the flow figure says a patient can have several exclusion
reasons, the codebook warns that excluded patients keep their strategy and intervals,
and no progress bar is drawn in JSON mode even on a terminal (point 3)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from fhir_spine import schema
from fhir_spine.logs import configure_logging
from fhir_spine.progress import counter
from fhir_spine.report.data import Cohort
from fhir_spine.report.figures import flow_figure


def test_flow_figure_says_reasons_can_overlap() -> None:
    patients = pd.DataFrame({
        "patient_id": ["a", "b"], "included": [False, True],
        "exclusion_reasons": ["under-18;cervical", ""], "strategy": ["staged", "staged"]})
    cohort = Cohort(patients, {}, Path("x"))
    texts = [t.get_text() for t in flow_figure(cohort).axes[0].texts]
    assert any("several exclusion reasons" in t for t in texts)


def test_codebook_warns_that_excluded_patients_keep_strategy_and_intervals() -> None:
    rows = {(r["table"], r["name"]): r["meaning"] for r in schema.codebook_rows()}
    assert "excluded patients keep their strategy, dates and intervals" in \
        rows[("patients", "included")]
    assert "also filled for excluded patients" in rows[("patients", "strategy")]


def test_no_progress_bar_in_json_mode_even_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    configure_logging(fmt="json")
    try:
        with counter("resources read") as tick:
            assert tick.__name__ == "<lambda>"  # the no-op, not rich's bar
    finally:
        configure_logging()
