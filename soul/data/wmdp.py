"""WMDP unlearning corpora: the hub (``cais/wmdp-corpora``, wikitext), local files or wmdp-mini.

The hub path calls the real ids: ``load_dataset("cais/wmdp-corpora", "<subset>-forget-corpus",
split="train")`` and the retain corpus likewise, ``load_dataset("wikitext", "wikitext-2-raw-v1",
split="test")`` for RMU's retain set. The bio forget corpus is gated and not in
``cais/wmdp-corpora``: it is read from ``task.forget_corpus_path`` (a JSON-lines file with a
``text`` field, as the access form delivers it). Local and embedded data use the same file names
(``<config>.jsonl``, ``wikitext-2-raw-v1.json``), and every source goes through the same schema check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WIKITEXT = ("wikitext", "wikitext-2-raw-v1", "test")
CORPUS_COLUMNS = {"text"}


class SchemaError(ValueError):
    """A dataset lacks a column the task needs."""


@dataclass
class Corpora:
    """Forget and retain texts, after filtering."""

    forget: list[str]
    retain: list[str]


def load_dataset(*args, **kwargs):
    """``datasets.load_dataset`` (a module-level name, so tests can record the calls)."""
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def _texts(ds, what: str, min_len: int) -> list[str]:
    missing = CORPUS_COLUMNS - set(ds.column_names)
    if missing:
        raise SchemaError(f"{what} lacks column(s) {sorted(missing)}; it has {ds.column_names}")
    # RMU's get_data keeps passages longer than min_len; empty lines never help.
    return [t for t in ds["text"] if t and t.strip() and len(t) > min_len]


def _local(path: Path, what: str):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    return load_dataset("json", data_files=str(path), split="train")


def load_corpora(subset: str, retain: str, source: str, data_dir: Path | None, corpora_hub_id: str = "cais/wmdp-corpora",
                 forget_corpus_path: str | None = None, min_len: int = 0) -> Corpora:
    """The forget corpus of ``subset`` and the retain texts (``wikitext`` or the subset's retain corpus)."""
    forget_name, retain_name = f"{subset}-forget-corpus", f"{subset}-retain-corpus"
    if source == "hub":
        if forget_corpus_path:
            forget = _local(forget_corpus_path, f"task.forget_corpus_path ({forget_name})")
        elif subset == "bio":
            raise ValueError("the bio forget corpus is gated and not in cais/wmdp-corpora: request access, "
                             "then pass its JSON-lines file as task.forget_corpus_path=PATH")
        else:
            forget = load_dataset(corpora_hub_id, forget_name, split="train")
        retain_ds = (load_dataset(WIKITEXT[0], WIKITEXT[1], split=WIKITEXT[2]) if retain == "wikitext"
                     else load_dataset(corpora_hub_id, retain_name, split="train"))
    elif source in ("local", "embedded"):
        if data_dir is None:
            raise ValueError("task.source=local needs task.data_dir (files named <config>.jsonl as on the hub)")
        data_dir = Path(data_dir)
        forget = _local(forget_corpus_path or data_dir / f"{forget_name}.jsonl", forget_name)
        retain_ds = _local(data_dir / ("wikitext-2-raw-v1.json" if retain == "wikitext" else f"{retain_name}.jsonl"),
                           "wikitext-2-raw-v1" if retain == "wikitext" else retain_name)
    else:
        raise ValueError(f"task.source must be hub, local or embedded, got {source!r}")
    texts = Corpora(_texts(forget, forget_name, min_len), _texts(retain_ds, retain, min_len))
    if not texts.forget:
        raise ValueError(f"{forget_name}: no passage longer than task.min_len={min_len}")
    if not texts.retain:
        raise ValueError(f"retain set ({retain}): no passage longer than task.min_len={min_len}")
    return texts

