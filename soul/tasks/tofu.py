"""The TOFU task: fictitious-author QA, evaluated with TOFU's official statistics."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from soul.data import tofu as tofu_data
from soul.data.qa import PromptTemplate
from soul.embedded import cache_key, ensure_tiny_tofu_models, ensure_tofu_mini, mini_config
from soul.eval import tofu_stats
from soul.eval.tofu import evaluate_tofu
from soul.eval.tofu import summarize as summarize_tofu
from soul.eval.tofu_soul import evaluate_tofu_soul
from soul.tasks.common import cached_evaluation, model_to_load

log = logging.getLogger(__name__)
EVAL_VERSION = 2  # bump when what an evaluation log contains changes (cached logs are then rebuilt)


class TofuTask:
    """Loads TOFU splits (hub, local or tofu-mini) and evaluates models on them."""

    name = "tofu"
    eval_file = "tofu_eval.json"
    metric_variant = "tofu-official"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.task_cfg = cfg.task
        self.cache_dir = Path(cfg.paths.cache_dir).expanduser()
        self.embedded_models: dict[str, Path] = {}
        tofu_data.check_split_pair(self.task_cfg.forget_split, self.task_cfg.retain_split)
        if self.task_cfg.eval.variant not in ("official", "soul"):
            raise ValueError(f"task.eval.variant must be official or soul, got {self.task_cfg.eval.variant!r}")

    def prepare(self, template: PromptTemplate) -> None:
        """Make the data (and, for ``model.source=embedded``, the base models) available."""
        t, m = self.task_cfg, self.cfg.model
        if m.source == "embedded":
            if t.source != "embedded":
                raise ValueError(f"model={m.name} is trained on tofu-mini, so it needs task.source=embedded "
                                 f"(got task.source={t.source})")
            self.embedded_models = ensure_tiny_tofu_models(self.cache_dir, t, m, template)
            data_dir = self.embedded_models["data"]
        elif t.source == "embedded":
            data_dir = ensure_tofu_mini(self.cache_dir, mini_config(t), m.get("architecture", {}).get("vocab_size", 2048))
        else:
            data_dir = t.data_dir
        self.data_dir = data_dir
        self.splits = tofu_data.load_tofu(t.forget_split, t.retain_split, t.holdout_split, t.source,
                                          data_dir, t.hub_id)

    def model_name(self) -> str:
        """What to load as the model to unlearn: the cached tiny target, a hub id or a local path."""
        return model_to_load(self.cfg.model, self.embedded_models.get("target"))

    @staticmethod
    def unlearning_template(template: PromptTemplate) -> PromptTemplate:
        """TOFU unlearns its QA pairs with the model's own template."""
        return template

    @property
    def forget_rows(self) -> list[dict]:
        return self.splits.forget.to_list()

    @property
    def retain_rows(self) -> list[dict]:
        return self.splits.retain.to_list()

    def _eval_settings(self) -> dict:
        e = self.task_cfg.eval
        return {"max_items": e.max_items, "batch_size": e.batch_size,
                "generation_batch_size": e.generation_batch_size,
                "generation_max_length": e.generation_max_length}

    def evaluate(self, model, tokenizer, template: PromptTemplate, partial_path: Path | None = None) -> dict:
        """The per-item TOFU log of ``model`` on this task's evaluation splits (plus MIA on holdout)."""
        return evaluate_tofu(model, tokenizer, template, self.splits.eval_sets, holdout=self.splits.holdout,
                             partial_path=partial_path, **self._eval_settings())

    def cached_evaluate(self, model_name: str, template: PromptTemplate, model=None, tokenizer=None) -> dict:
        """Evaluate a fixed (not unlearned) model once and keep its log in the cache."""
        t = self.task_cfg
        m = self.cfg.model
        key = cache_key(EVAL_VERSION, model_name, m.dtype, self._eval_settings(), template.__dict__, t.source,
                        str(self.data_dir), t.hub_id, t.forget_split, t.holdout_split)
        return cached_evaluation(self.cache_dir / "evals" / f"{key}.json", model_name, m,
                                 lambda mdl, tok: self.evaluate(mdl, tok, template), model, tokenizer)

    def reference_log(self, template: PromptTemplate) -> dict | None:
        """The retain model's per-item log, which forget quality is measured against."""
        ref = self.task_cfg.eval.reference_log
        if ref:
            return tofu_stats.load_log(ref)
        if "retain" in self.embedded_models:
            return self.cached_evaluate(str(self.embedded_models["retain"]), template)
        log.warning("no task.eval.reference_log given: forget_quality will be null. Pass the retain "
                    "model's per-item log (soul's tofu_eval.json or TOFU's eval_log_aggregated.json).")
        return None

    def evaluate_soul_variant(self, model, tokenizer) -> dict | None:
        """SOUL's own TOFU statistics (``task.eval.variant=soul``), or None for the official variant."""
        if self.task_cfg.eval.variant == "official":  # the value was validated in __init__
            return None
        e = self.task_cfg.eval
        return evaluate_tofu_soul(model, tokenizer, self.splits.eval_sets, self.cfg.model.family,
                                  batch_size=e.batch_size, generation_batch_size=e.generation_batch_size,
                                  generation_max_length=e.generation_max_length)

    @staticmethod
    def summarize(log_: dict, reference: dict | None) -> dict:
        """TOFU's official summary plus membership inference and memorization when logged."""
        return summarize_tofu(log_, reference)

    def describe(self) -> str:
        t = self.task_cfg
        return f"tofu[{t.source}] {t.forget_split}/{t.retain_split}"


