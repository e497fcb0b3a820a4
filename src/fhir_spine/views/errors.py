"""Exceptions raised by the ViewDefinition runner.

Two kinds are kept apart on purpose: a :class:`ViewDefinitionError` means the view
itself is wrong (the author must fix the JSON), while a :class:`ViewEvaluationError`
means a valid view met data it cannot project (e.g. a non-collection column saw
two values).  Both derive from :class:`ViewError` so callers that only want "did
the view run" can catch one type.  Messages are a single line that names the
view, so they read well in pipeline logs.
"""

from __future__ import annotations


class ViewError(Exception):
    """Base class of every error raised by :mod:`fhir_spine.views`."""


class ViewDefinitionError(ViewError):
    """The ViewDefinition is malformed or violates the SQL on FHIR v2 rules."""

    def __init__(self, view: str, problem: str) -> None:
        self.view = view
        self.problem = problem
        super().__init__(f"ViewDefinition {view!r}: {problem}")


class ViewEvaluationError(ViewError):
    """A valid ViewDefinition could not be evaluated over a particular resource."""

    def __init__(self, view: str, problem: str, resource: str | None = None) -> None:
        self.view = view
        self.problem = problem
        self.resource = resource
        where = f" on {resource}" if resource else ""
        super().__init__(f"ViewDefinition {view!r}{where}: {problem}")
