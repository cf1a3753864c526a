"""Checkpoints of the unlearning loop, so that a run killed at step 450 of 500 resumes at 450.

``accelerate``'s ``save_state`` writes the model (safetensors), the optimizer state (Sophia's
curvature EMA included; sharded where FSDP or DeepSpeed shard it), the learning-rate schedule and
every process's RNG states; soul adds ``progress.json``: the step, how many forget/retain batches
were drawn, and the curvature hook's pass count and sampling generator. A checkpoint is written to
``checkpoint.tmp`` and renamed into place only when complete, so ``checkpoint/`` is always a whole
one (the previous one is kept as ``checkpoint.old`` until the rename is done). Loading reads only
what soul wrote into the run's own directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PROGRESS_FILE = "progress.json"


class Checkpointer:
    """Saves the loop's state every ``every`` optimizer steps into ``run_dir/checkpoint``."""

    def __init__(self, accelerator, run_dir: Path, every: int, fingerprint: str = ""):
        if not isinstance(every, int) or every < 0:
            raise ValueError(f"checkpoint.every must be a non-negative integer (0: never), got {every!r}")
        # ``fingerprint``: a hash of the settings that determine the result; a checkpoint of other settings
        # is never resumed from.
        self.accelerator, self.every, self.fingerprint = accelerator, every, fingerprint
        self.path = Path(run_dir) / "checkpoint"
        self.tmp, self.old = self.path.with_name("checkpoint.tmp"), self.path.with_name("checkpoint.old")
        self.last_step: int | None = None

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def latest(self) -> Path | None:
        """The newest complete checkpoint (a crash between the two renames leaves only ``.old``)."""
        for path in (self.path, self.old):
            if (path / PROGRESS_FILE).is_file():
                return path
        return None

    def save(self, step: int, progress: dict) -> None:
        """Write a complete checkpoint of ``step`` (collective: every process calls it)."""
        acc = self.accelerator
        if acc.is_main_process and self.tmp.exists():
            shutil.rmtree(self.tmp)
        acc.wait_for_everyone()
        acc.save_state(str(self.tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            record = {"step": step, "fingerprint": self.fingerprint, **progress}
            (self.tmp / PROGRESS_FILE).write_text(json.dumps(record))  # written last: marks the checkpoint whole
            if self.path.exists():
                if self.old.exists():
                    shutil.rmtree(self.old)
                self.path.replace(self.old)
            self.tmp.replace(self.path)
            if self.old.exists():
                shutil.rmtree(self.old)
        acc.wait_for_everyone()
        self.last_step = step

    def load(self) -> dict | None:
        """Restore the newest checkpoint into the prepared objects; its progress, or None if there is none."""
        path = self.latest()
        if path is None:
            return None
        progress = json.loads((path / PROGRESS_FILE).read_text())
        if progress.get("fingerprint") != self.fingerprint:
            raise ValueError(f"resume=true: the checkpoint in {path} was written by a run of other settings; "
                             "resume=false starts this run afresh (overwriting it)")
        self.accelerator.load_state(str(path))
        self.last_step = progress["step"]
        return progress

    def remove(self) -> None:
        """Drop the checkpoints once the run has finished (its results are written)."""
        if self.accelerator.is_main_process:
            for path in (self.path, self.old, self.tmp):
                if path.exists():
                    shutil.rmtree(path)

    def describe(self) -> str:
        if self.last_step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {self.last_step}) is kept in {self.path}"
