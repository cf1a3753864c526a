"""The WMDP task: unlearn hazardous knowledge from a corpus, scored by multiple-choice accuracy.

Forget data is the subset's forget corpus, retain data wikitext (RMU's choice) or the subset's
retain corpus; both are plain text, unlearned as language modelling on the whole passage.
Evaluation runs lm-evaluation-harness in process on the live model: the built-in ``wmdp_bio``,
``wmdp_cyber`` and ``mmlu`` tasks on the real path, and on the embedded default local tasks
over wmdp-mini that copy the built-ins' prompt fields (``soul.eval.harness``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soul.data import wmdp as wmdp_data
from soul.data.qa import PromptTemplate
from soul.embedded import cache_key, ensure_tiny_wmdp_model, ensure_wmdp_mini
from soul.eval import harness
from soul.tasks.common import NoReferenceModel, cached_evaluation, model_to_load

EVAL_VERSION = 1
SUBSETS = ("bio", "cyber")
# Metric key -> (built-in lm-eval task, the local stand-in's name and wmdp-mini file).
EVAL_TASKS = {
    "wmdp_bio": ("wmdp_bio", "wmdp_bio_mini", "wmdp-bio.json"),
    "wmdp_cyber": ("wmdp_cyber", "wmdp_cyber_mini", "wmdp-cyber.json"),
    "mmlu": ("mmlu", "mmlu_mini", "mmlu.json"),
}
# The MMLU stand-in is one subject; its prompt fields are those of MMLU's "miscellaneous" subtask.
MMLU_LIKE = "mmlu_miscellaneous"
RAW_TEXT = PromptTemplate("", "", "")  # corpora are unlearned as plain text, every token a target


class WmdpTask(NoReferenceModel):
    """Loads the WMDP corpora (hub, local or wmdp-mini) and evaluates with lm-eval."""

    name = "wmdp"
    eval_file = "wmdp_eval.json"
    metric_variant = "lm-eval zero-shot acc"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.task_cfg = cfg.task
        self.cache_dir = Path(cfg.paths.cache_dir).expanduser()
        t = self.task_cfg
        if t.subset not in SUBSETS:
            raise ValueError(f"task.subset must be one of {', '.join(SUBSETS)}, got {t.subset!r}")
        if t.retain not in ("wikitext", "corpus"):
            raise ValueError(f"task.retain must be wikitext or corpus, got {t.retain!r}")
        unknown = [k for k in t.eval.tasks if k not in EVAL_TASKS]
        if unknown:
            raise ValueError(f"task.eval.tasks: unknown {unknown}; choose from {sorted(EVAL_TASKS)}")
        self.embedded_model: Path | None = None

    def prepare(self, template: PromptTemplate) -> None:
        """Make the corpora (and, for ``model.source=embedded``, the base model) available."""
        t, m = self.task_cfg, self.cfg.model
        if m.source == "embedded":
            if t.source != "embedded":
                raise ValueError(f"model={m.name} is trained on wmdp-mini, so it needs task.source=embedded "
                                 f"(got task.source={t.source})")
            self.data_dir, self.embedded_model = ensure_tiny_wmdp_model(self.cache_dir, t, m)
        elif t.source == "embedded":
            self.data_dir = ensure_wmdp_mini(self.cache_dir, t, m.get("architecture", {}).get("vocab_size", 2048))
        else:
            self.data_dir = Path(t.data_dir) if t.data_dir else None
        self.corpora = wmdp_data.load_corpora(
            t.subset, t.retain, t.source, self.data_dir, corpora_hub_id=t.corpora_hub_id,
            forget_corpus_path=t.forget_corpus_path, min_len=t.min_len)

    def model_name(self) -> str:
        """What to load as the model to unlearn: the cached tiny base model, a hub id or a local path."""
        return model_to_load(self.cfg.model, self.embedded_model)

    @staticmethod
    def unlearning_template(template: PromptTemplate) -> PromptTemplate:
        """Corpora are plain text: no question, the whole passage is the target."""
        return RAW_TEXT

    @property
    def forget_rows(self) -> list[dict]:
        return [{"question": "", "answer": text} for text in self.corpora.forget]

    @property
    def retain_rows(self) -> list[dict]:
        return [{"question": "", "answer": text} for text in self.corpora.retain]

    def _lm_eval_tasks(self) -> tuple[dict[str, str], Path | None]:
        """{metric key: lm-eval task name} and the directory of local task YAMLs (embedded only)."""
        keys = list(self.task_cfg.eval.tasks)
        if self.task_cfg.source == "hub":
            return {k: EVAL_TASKS[k][0] for k in keys}, None
        task_dir = Path(self.data_dir) / "lm_eval_tasks"
        names = {}
        for key in keys:
            builtin, local, filename = EVAL_TASKS[key]
            like = MMLU_LIKE if key == "mmlu" else builtin
            harness.write_local_task(local, like=like, data_file=Path(self.data_dir) / filename, out_dir=task_dir)
            names[key] = local
        return names, task_dir

    def evaluate(self, model, tokenizer, template: PromptTemplate, partial_path: Path | None = None) -> dict:
        """Accuracy on WMDP and MMLU (or their stand-ins) through lm-eval, in process."""
        names, task_dir = self._lm_eval_tasks()
        e = self.task_cfg.eval
        accuracy = harness.evaluate_tasks(model, tokenizer, list(names.values()), include_path=task_dir,
                                          batch_size=e.batch_size, limit=e.limit)
        return {"meta": {"format": "soul-lm-eval/1", "tasks": names, "num_fewshot": 0, "limit": e.limit,
                         "source": self.task_cfg.source},
                "accuracy": {key: accuracy[name] for key, name in names.items()}}

    def cached_evaluate(self, model_name: str, template: PromptTemplate, model=None, tokenizer=None) -> dict:
        """Evaluate a fixed (not unlearned) model once and keep the result in the cache."""
        t, m = self.task_cfg, self.cfg.model
        key = cache_key(EVAL_VERSION, model_name, m.dtype, OmegaConf.to_container(t.eval, resolve=True), t.source,
                        str(self.data_dir))
        return cached_evaluation(self.cache_dir / "evals" / f"wmdp-{key}.json", model_name, m,
                                 lambda mdl, tok: self.evaluate(mdl, tok, template), model, tokenizer)

    def summarize(self, log_: dict, reference: dict | None = None) -> dict:
        """``wmdp_bio_acc``, ``wmdp_cyber_acc``, ``mmlu_acc`` and ``forget_acc`` (the subset's)."""
        out = {f"{key}_acc": value for key, value in log_["accuracy"].items()}
        out["forget_acc"] = out.get(f"wmdp_{self.task_cfg.subset}_acc")
        return out

    def describe(self) -> str:
        t = self.task_cfg
        return f"wmdp[{t.source}] {t.subset} (retain: {t.retain})"

