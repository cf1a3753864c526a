"""Experiment trackers, chosen by the ``logger`` config group (``none`` | ``wandb``).

The runner always writes its JSON files; a logger mirrors them to a tracker. It receives
every training-log record as it is written (``log_step``) and, at the end, the flat metrics
and the run's per-item evaluation files (``finish``).
"""

from __future__ import annotations

import logging
import netrc
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("soul")

WANDB_MODES = ("auto", "online", "offline", "disabled")
# Config keys whose values are never uploaded or written: credentials belong in the environment.
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|credential)", re.IGNORECASE)
REDACTED = "<redacted>"


class RunLogger:
    """The ``none`` logger: the JSON files in the run directory are the whole record."""

    name = "none"

    def log_step(self, record: dict) -> None:
        """One line of ``train_log.jsonl`` (step, losses, lr, optimizer diagnostics)."""

    def finish(self, metrics: dict | None, files: Iterable[Path] = (), status: str = "completed") -> None:
        """Final metrics and the per-item evaluation files; ``status`` is completed or failed."""


def redact_secrets(data):
    """A copy of a (nested) config dict with the values of credential-like keys replaced."""
    if isinstance(data, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) else redact_secrets(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v) for v in data]
    return data


def wandb_logged_in(environ: dict | None = None) -> bool:
    """Whether W&B credentials are available without asking: WANDB_API_KEY, an identity-token
    file, or a netrc entry for the W&B host (what ``wandb login`` writes)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(env.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str, environ: dict | None = None) -> str:
    """W&B's conventions: ``WANDB_MODE`` (or ``WANDB_DISABLED``) in the environment wins over
    ``auto``; otherwise ``auto`` means online when logged in and offline when not."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    env = os.environ if environ is None else environ
    if mode != "auto":
        return mode
    if env.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    if env.get("WANDB_MODE"):
        return {"dryrun": "offline", "run": "online"}.get(env["WANDB_MODE"], env["WANDB_MODE"])
    return "online" if wandb_logged_in(env) else "offline"


def run_identity(cfg: DictConfig) -> dict:
    """Name, group and tags of a run, from its task, model, objective, optimizer and seed."""
    task, objective, optim, seed = cfg.task.name, cfg.objective.name, cfg.optim.name, cfg.seed
    lc = cfg.logger
    return {
        "name": lc.get("run_name") or f"{task}-{objective}-{optim}-seed{seed}",
        # Seeds of one arm share a group, so the W&B UI averages them.
        "group": lc.get("group") or f"{task}-{cfg.model.name}-{objective}-{optim}",
        "tags": [task, cfg.model.name, f"objective:{objective}", f"optim:{optim}", f"seed:{seed}",
                 *list(lc.get("tags") or [])],
    }


class WandbLogger(RunLogger):
    """Weights & Biases: one run per soul run, files under ``<run dir>/wandb``."""

    name = "wandb"

    def __init__(self, cfg: DictConfig, out_dir: Path):
        import wandb

        lc = cfg.logger
        self.mode = resolve_wandb_mode(lc.mode)
        config = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
        # A resumed run continues its W&B run (its id is kept in the run directory).
        id_file = out_dir / "wandb_run_id.txt"
        resume = ({"id": id_file.read_text().strip(), "resume": "allow"}
                  if cfg.get("resume") and id_file.is_file() else {})
        self.run = wandb.init(project=lc.project, entity=lc.get("entity"), dir=str(out_dir), mode=self.mode,
                              config=config, job_type="unlearn", reinit="create_new", **run_identity(cfg), **resume)
        id_file.write_text(self.run.id)
        self.run.define_metric("train/*", step_metric="train/step")
        if self.mode == "offline":
            log.info("W&B offline: sync later with `wandb sync %s`", Path(self.run.dir).parent)

    def log_step(self, record: dict) -> None:
        values = {f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        self.run.log({"train/step": record["step"], **values})

    def finish(self, metrics: dict | None, files: Iterable[Path] = (), status: str = "completed") -> None:
        import wandb

        if metrics:
            self.run.summary.update({k: v for k, v in metrics.items() if v is not None})
        self.run.summary["status"] = status
        files = [Path(f) for f in files if Path(f).is_file()]
        if files:
            artifact = wandb.Artifact(f"eval-{self.run.id}", type="evaluation",
                                      description="soul's per-item evaluation files of this run")
            for f in files:
                artifact.add_file(str(f), name=f.name)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if status == "completed" else 1)


LOGGERS: dict[str, Callable[[DictConfig, Path], RunLogger]] = {
    "none": lambda cfg, out_dir: RunLogger(),
    "wandb": WandbLogger,
}


def build_logger(cfg: DictConfig, out_dir: Path) -> RunLogger:
    """The logger ``cfg.logger.name`` names (``none`` | ``wandb``)."""
    name = cfg.logger.name
    if name not in LOGGERS:
        raise ValueError(f"logger={name!r} is not a logger; choose one of {', '.join(sorted(LOGGERS))}")
    return LOGGERS[name](cfg, out_dir)
