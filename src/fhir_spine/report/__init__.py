"""Analysis report for an extraction output folder (`fhir-spine report`, issue 6).

Modules, one job each:

- `stats`: statistics that reproduce R's defaults (t.test, wilcox.test, fisher.test,
  chisq.test, quantile, density bandwidth); pure functions, no pandas.
- `data`: read and normalise `OUT_DIR` (manifest + patients table) into a `Cohort`.
- `tables`: the report tables (Table 1, outcomes, PROs, adverse events, flow) as display
  frames plus full-precision statistics.
- `figures`: Figures 3 and 4 analogues and the patient flow, PNG + SVG, deterministic.
- `html`: self-contained HTML and Markdown rendering.
- `build`: the report folder layout and atomic publication.

See docs/report.md for the contents, the layout and how the statistics match R.
"""
