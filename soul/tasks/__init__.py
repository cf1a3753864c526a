"""Tasks, registered by name: each knows its data, its embedded stand-in and its evaluation."""

from __future__ import annotations

from soul.tasks.copyright import CopyrightTask
from soul.tasks.tofu import TofuTask
from soul.tasks.wmdp import WmdpTask

TASKS = {"tofu": TofuTask, "wmdp": WmdpTask, "copyright": CopyrightTask}


def build_task(cfg):
    """The task object for ``cfg.task.name``."""
    name = cfg.task.name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {sorted(TASKS)}")
    return TASKS[name](cfg)
