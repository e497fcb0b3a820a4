"""Progress display: a rich bar with a rate on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def counter(label: str, *, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    from fhir_spine.logs import json_mode

    if quiet or json_mode() or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=None, rate="")

        def tick(n: int) -> None:
            bar.update(task, advance=n)
            speed = bar.tasks[0].speed
            if speed:
                bar.update(task, rate=f"{speed:,.0f}/s")

        yield tick
