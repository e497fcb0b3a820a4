"""Scheduled incremental refresh of a published dataset (`fhir-spine refresh`).

- `lock.py`   one refresh at a time (flock with an owner record)
- `state.py`  the state folder beside the dataset and `state.json` (the watermark)
- `store.py`  the raw store (SQLite): current resources and per-patient rows
- `pull.py`   what is asked of the server besides the export (changes, history, ids)
- `scopes.py` what a run covers (REST, bulk, group): describe, pull all, pull changes,
              membership
- `merge.py`  merging what was pulled into the store, noting what it touched
- `report.py` the run's options and report, JSON events and checkpoints
- `units.py`  per-patient recomputation and the assembly of the dataset
- `run.py`    the algorithm, and the order of its effects that makes kill -9 safe

See docs/refresh.md.
"""
