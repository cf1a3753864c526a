"""Job bookkeeping for grids: each run directory says whether its job is running, completed or
failed (``status.json``), and a rerun of a finished job is skipped instead of recomputed."""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

STATUS_FILE = "status.json"
# Settings that do not change a job's result: where files go, which tracker mirrors them,
# whether to overwrite, and checkpointing (a resumed run ends where an uninterrupted one does).
NOT_PART_OF_RESULT = ("overwrite", "logger", "paths", "sweep_name", "resume", "checkpoint")


def write_status(out_dir: Path, status: str, error: BaseException | None = None) -> None:
    """Record a job's state (atomically); a failure keeps its error and traceback."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = "".join(traceback.format_exception(error))
    tmp = out_dir / f"{STATUS_FILE}.{os.getpid()}.tmp"  # processes of one run that fail together each write one
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out_dir / STATUS_FILE)


def read_status(run_dir: Path) -> dict | None:
    """The job's ``status.json``, or None when it has none."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def result_config(config: dict) -> dict:
    """The part of a resolved config that determines a run's result."""
    return {k: v for k, v in config.items() if k not in NOT_PART_OF_RESULT}


def result_fingerprint(cfg: DictConfig) -> str:
    """A hash of the settings that determine a run's result (checkpoints carry it)."""
    config = result_config(OmegaConf.to_container(cfg, resolve=True))
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def finished_result(cfg: DictConfig, out_dir: Path) -> dict | None:
    """The metrics of a completed run of this very config in ``out_dir``, or None when the job must run.

    A completed run whose config differs is neither reused nor silently replaced: that raises,
    naming the differences, unless ``overwrite=true``.
    """
    if cfg.get("overwrite", False):
        return None
    status = read_status(out_dir)
    metrics_path, config_path = out_dir / "metrics.json", out_dir / "config.yaml"
    if not status or status["status"] != "completed" or not metrics_path.is_file() or not config_path.is_file():
        return None
    old = result_config(OmegaConf.to_container(OmegaConf.load(config_path)))
    # Compared through the same YAML round trip the saved file went through, so values agree in type.
    new = result_config(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))))
    if old != new:
        changes = _differences(old, new)
        raise ValueError(f"{out_dir} holds a finished run of a different config ({'; '.join(changes[:5])}"
                         f"{' ...' if len(changes) > 5 else ''}). Rerun with overwrite=true to replace it, "
                         f"or write elsewhere (sweep_name=... or hydra.sweep.dir=...).")
    return json.loads(metrics_path.read_text())
