"""In-process bridge to lm-evaluation-harness for multiple-choice tasks (WMDP, MMLU, local stand-ins).

Three pieces:

* :func:`builtin_task_config` reads the YAML config that lm-eval ships for a task, ``include:`` merged;
* :func:`write_local_task` writes an lm-eval task that scores a local JSON-lines file exactly the way a
  built-in task scores its hub data (same prompt, choices, target and metric), for offline stand-ins;
* :func:`evaluate_tasks` runs ``lm_eval.simple_evaluate`` on a live model and returns accuracies.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

# The keys that decide how an item is turned into a prompt and scored. A local stand-in copies them
# verbatim from the built-in task, so that only the data differs between the two.
PROMPT_FIELDS = ("description", "doc_to_text", "doc_to_choice", "doc_to_target", "output_type",
                 "num_fewshot", "metric_list")

# The metric read back from lm-eval's results: accuracy with no filter.
_ACC_KEY = "acc,none"

# Names of lm-eval 0.4.13's index entry kinds (``lm_eval.tasks._index.Kind``, private) that are
# single tasks; the others are GROUP, TAG and UNKNOWN. Compared by name to stay off private imports.
_TASK_KINDS = ("TASK", "PY_TASK")


class TaggedScalar(str):
    """A YAML scalar that carried an unknown tag (lm-eval's ``!function``): its text, plus ``.tag``."""

    tag: str

    def __new__(cls, value: str, tag: str) -> TaggedScalar:
        obj = super().__new__(cls, value)
        obj.tag = tag
        return obj


# The C loader when PyYAML was built with libyaml: the built-in configs are read on every call.
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TolerantLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """A safe YAML loader that keeps unknown local tags (``!function utils.x``) instead of failing.

    lm-eval's own loader imports the referenced Python function; reading a config needs none of that.
    """


def _construct_tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return TaggedScalar(loader.construct_scalar(node), "!" + tag_suffix)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_TolerantLoader.add_multi_constructor("!", _construct_tagged)


def _load_yaml_with_includes(path: Path, _seen: frozenset[Path] = frozenset()) -> dict:
    """Parse ``path``; merge its ``include:`` file(s) (relative to ``path``) under its own keys."""
    path = path.expanduser().resolve()
    if path in _seen:
        raise ValueError(f"include cycle at {path}")
    with path.open("rb") as fh:
        cfg = yaml.load(fh, Loader=_TolerantLoader)  # noqa: S506 (a safe loader with one extra constructor)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} does not hold a YAML mapping")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict = {}
    # lm-eval accepts one include or a list of them; later includes override earlier ones.
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        merged.update(_load_yaml_with_includes(inc_path, _seen | {path}))
    merged.update(cfg)  # the including file's keys win
    return merged


@functools.lru_cache(maxsize=1)
def default_task_manager():
    """The process-wide ``lm_eval.tasks.TaskManager()`` over lm-eval's built-in tasks, built on first use.

    Indexing lm-eval's ~15k task files takes seconds (tens of seconds on a busy machine), so it is
    built once. It reads only the YAML files it ships, so it works offline.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _entry(name: str, task_manager=None):
    """The index entry lm-eval 0.4.13 keeps for ``name`` (``.kind``, ``.yaml_path``), or ValueError."""
    tm = task_manager if task_manager is not None else default_task_manager()
    entry = tm.task_index.get(name)
    if entry is None:
        raise ValueError(f"unknown lm-eval task {name!r}: not a task, group or tag known to lm-eval")
    return entry


def builtin_task_config(name: str) -> dict:
    """The YAML config lm-eval ships for task (or group) ``name``, its ``include:`` file merged in.

    ``!function`` values are kept as :class:`TaggedScalar` strings, not imported. Raises ValueError for
    an unknown name or one with no YAML file of its own (a tag, say).
    """
    entry = _entry(name)
    if entry.yaml_path is None:
        raise ValueError(f"lm-eval task {name!r} ({entry.kind.name.lower()}) has no YAML config of its own")
    return _load_yaml_with_includes(Path(entry.yaml_path))


def write_local_task(name: str, like: str, data_file: Path, out_dir: Path) -> Path:
    """Write ``out_dir/<name>.yaml``: task ``name`` scoring JSON-lines ``data_file`` as lm-eval's ``like`` does.

    Rows of ``data_file`` must carry the fields ``like``'s prompt uses (for WMDP and MMLU:
    ``question``, ``choices`` (4 strings), ``answer`` (an index)). Every key of :data:`PROMPT_FIELDS`
    that ``like`` sets is copied verbatim; the data source becomes the local file's ``test`` split.
    Returns the path of the YAML file. Register its folder with ``evaluate_tasks(include_path=...)``.
    """
    if not name or not isinstance(name, str) or "/" in name or "\\" in name:
        raise ValueError(f"invalid task name {name!r}: it names the YAML file, so it must be a plain name")
    data_file = Path(data_file).expanduser()
    if not data_file.is_file():
        raise FileNotFoundError(f"data file for local task {name!r} not found: {data_file}")
    builtin = builtin_task_config(like)
    if "task" not in builtin:
        raise ValueError(f"lm-eval {like!r} is a group, not a task; give one of its tasks as `like`")

    prompt = {key: builtin[key] for key in PROMPT_FIELDS if key in builtin}
    functions = [key for key, value in prompt.items() if isinstance(value, TaggedScalar)]
    if functions:
        # A `!function` is resolved relative to the built-in YAML's folder; copied elsewhere it would
        # be read as a literal template and silently score something else.
        raise ValueError(f"lm-eval task {like!r} defines {functions} as Python functions; "
                         "write_local_task copies template fields only")
    if "process_docs" in builtin:
        # The built-in rewrites its rows before templating; the stand-in would see them unprocessed.
        raise ValueError(f"lm-eval task {like!r} preprocesses its rows (process_docs); "
                         "write_local_task mirrors only tasks that template the raw rows")

    cfg = {
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        # A mapping, not a bare path: a bare path would load into split "train", not "test".
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "validation_split": None,
        "training_split": None,
        "fewshot_split": None,
        **prompt,
        "metadata": {"version": 1},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.yaml"
    # safe_dump quotes and escapes strings as needed, so they read back byte-identical.
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=10_000),
                    encoding="utf-8")
    return path


def _local_only(names: list, index: dict) -> bool:
    """Whether every requested name resolves from ``index`` alone (tasks, or groups of such tasks)."""
    def ok(name, depth=0) -> bool:
        entry = index.get(name) if isinstance(name, str) else None
        if entry is None or depth > 20:
            return False
        if entry.kind.name in _TASK_KINDS:
            return True
        if entry.kind.name == "GROUP" and entry.cfg is not None:
            children = entry.cfg.get("task", [])
            children = children if isinstance(children, list) else [children]
            return all(ok(child, depth + 1) for child in children)
        return False  # a tag may gather tasks from lm-eval's own folders too

    return all(ok(name) for name in names)


def _task_manager_for(tasks: list, include_path: Path | None):
    """The TaskManager to load ``tasks`` with: the cached built-in one, or one that adds ``include_path``."""
    if include_path is None:
        return default_task_manager()
    from lm_eval.tasks import TaskManager

    include_path = Path(include_path).expanduser().resolve()
    if not include_path.is_dir():
        raise FileNotFoundError(f"include_path is not a directory: {include_path}")
    # Indexing only the local folder takes milliseconds, re-indexing lm-eval's own tasks seconds. When
    # every requested name lives in the local folder, both managers load the same configs (include
    # paths take precedence over the built-ins anyway), so the small one is used.
    local = TaskManager(include_path=str(include_path), include_defaults=False)
    if _local_only(tasks, local.task_index):
        return local
    return TaskManager(include_path=str(include_path))


def _check_known(tasks: list, task_manager) -> None:
    """ValueError naming every requested task that neither the index nor the file system knows."""
    missing = [t for t in tasks if isinstance(t, str) and t not in task_manager.task_index
               and not Path(t).expanduser().is_file()]  # lm-eval also accepts a YAML file's path
    if missing:
        raise ValueError(f"unknown lm-eval task(s) {missing}: not a task, group or tag known to lm-eval "
                         "(for a local task, pass the folder holding its YAML as include_path)")


def evaluate_tasks(model, tokenizer, tasks: list[str], include_path: Path | None = None,
                   batch_size: int = 16, limit: int | None = None) -> dict[str, float]:
    """Zero-shot lm-eval accuracy (``acc``) of the live ``model`` on ``tasks``, run in-process.

    Returns ``{name: accuracy}`` for every task and group lm-eval reports an ``acc`` for (so the
    subtasks of a group such as ``mmlu`` come along with it); each requested task or group is
    guaranteed a key. Groups give lm-eval's aggregate (size-weighted for ``mmlu`` and ``wmdp``).
    ``include_path``: a folder of extra task YAMLs (e.g. from :func:`write_local_task`). ``limit``:
    at most that many items per task (for tests). The model's train/eval mode is restored afterwards.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = list(tasks)
    if not tasks:
        raise ValueError("evaluate_tasks needs at least one task")
    task_manager = _task_manager_for(tasks, include_path)
    _check_known(tasks, task_manager)

    # HFLM switches the model to eval mode; remember every submodule's mode, not only the top one.
    modes = [(module, module.training) for module in model.modules()]
    try:
        # An explicit tokenizer: HFLM would otherwise load one from model.name_or_path (a download).
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager,
                                              num_fewshot=0, log_samples=False, bootstrap_iters=0,
                                              limit=limit)
        except KeyError as err:
            # lm-eval 0.4.13 reports an unknown name as KeyError("Spec 'x' is not a registered
            # task/group/tag name or valid YAML path"); other KeyErrors are not about names.
            message = str(err.args[0]) if err.args else ""
            named = [t for t in tasks if isinstance(t, str) and f"'{t}'" in message]
            if not named:
                raise
            raise ValueError(f"unknown lm-eval task(s) {named}: {message}") from err
    finally:
        for module, training in modes:
            module.training = training
    if results is None:  # lm-eval returns None on ranks other than 0
        raise RuntimeError("lm-eval returned no results (not the main process?)")

    scores: dict[str, float] = {}
    # Groups last: their aggregate is the one to report when a name appears in both tables.
    for table in (results.get("results", {}), results.get("groups", {})):
        for key, metrics in table.items():
            value = metrics.get(_ACC_KEY)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scores[key] = float(value)
    for name in tasks:
        entry = task_manager.task_index.get(name) if isinstance(name, str) else None
        if entry is not None and entry.kind.name != "TAG" and name not in scores:
            raise ValueError(f"lm-eval reported no {_ACC_KEY!r} for {name!r}; "
                             "evaluate_tasks is for multiple-choice tasks scored by accuracy")
    return scores
