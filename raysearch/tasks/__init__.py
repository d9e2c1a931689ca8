"""Downstream tasks, one module each, behind a small common interface (`tasks.base.Task`)."""

from __future__ import annotations

from raysearch.errors import fail
from raysearch.tasks.generation import Generation
from raysearch.tasks.top_tagging import TopTagging

TASKS = {t.name: t for t in (TopTagging(), Generation())}


def get_task(name: str):
    if name not in TASKS:
        fail(f"task: unknown task {name!r}, expected one of {sorted(TASKS)}")
    return TASKS[name]
