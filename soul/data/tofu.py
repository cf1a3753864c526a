"""TOFU data: the hub loader, the local/embedded loader, and the schema both must satisfy.

``source=hub`` calls ``datasets.load_dataset("locuslab/TOFU", <config>, split="train")``.
``source=local`` reads ``<data_dir>/<config>.json`` (JSON-lines, the hub's own file names)
through ``load_dataset("json", ...)``. ``source=embedded`` first writes tofu-mini into the
cache, then loads it like ``local``. The same schema check runs on every path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset

HUB_ID = "locuslab/TOFU"

_QA = ("question", "answer")
_PERTURBED = ("question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer")
_GENERAL = ("question", "answer", "perturbed_answer")

# Columns every configuration must have, and the length of its perturbed_answer lists.
EXPECTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "full": _QA,
    **{f"forget{p}": _QA for p in ("01", "05", "10")},
    **{f"retain{p}": _QA for p in ("90", "95", "99")},
    **{f"holdout{p}": _QA for p in ("01", "05", "10")},
    **{f"forget{p}_perturbed": _PERTURBED for p in ("01", "05", "10")},
    "retain_perturbed": _PERTURBED,
    "real_authors_perturbed": _GENERAL,
    "world_facts_perturbed": _GENERAL,
    "real_authors": _QA,
    "world_facts": _QA,
}
PERTURBED_LENGTH = {name: (3 if name.startswith(("real_authors", "world_facts")) else 5)
                    for name, cols in EXPECTED_COLUMNS.items() if "perturbed_answer" in cols}


class SchemaError(ValueError):
    """A dataset does not have the columns or shapes TOFU defines."""


def validate_schema(ds: Dataset, config_name: str, origin: str) -> Dataset:
    """Check ``ds`` against TOFU's schema for ``config_name``; ``origin`` names the file or hub id."""
    if config_name not in EXPECTED_COLUMNS:
        raise SchemaError(f"unknown TOFU configuration {config_name!r} (from {origin}); "
                          f"known: {sorted(EXPECTED_COLUMNS)}")
    missing = [c for c in EXPECTED_COLUMNS[config_name] if c not in ds.column_names]
    if missing:
        raise SchemaError(f"{origin}: TOFU configuration {config_name!r} is missing column(s) "
                          f"{missing}; it has {ds.column_names}")
    if len(ds) == 0:
        raise SchemaError(f"{origin}: TOFU configuration {config_name!r} has no rows")
    want = PERTURBED_LENGTH.get(config_name)
    if want is not None:
        for i, options in enumerate(ds["perturbed_answer"]):
            if not isinstance(options, list) or len(options) != want:
                raise SchemaError(f"{origin}: row {i} of {config_name!r} has perturbed_answer "
                                  f"{options!r}; expected a list of {want} strings")
    return ds


def retain_split_for(forget_split: str) -> str:
    """TOFU's rule: ``forgetXX`` pairs with ``retain(100-XX)`` (forget05 -> retain95)."""
    m = re.fullmatch(r"forget(\d\d)", forget_split)
    if not m:
        raise ValueError(f"task.forget_split must be forget01, forget05 or forget10, got {forget_split!r}")
    return f"retain{100 - int(m.group(1)):02d}"


def check_split_pair(forget_split: str, retain_split: str) -> None:
    """Reject a forget/retain pair that does not partition TOFU's ``full`` set."""
    expected = retain_split_for(forget_split)
    if retain_split != expected:
        raise ValueError(f"task.forget_split={forget_split} and task.retain_split={retain_split} do not "
                         f"partition TOFU's full set: {forget_split} pairs with {expected}")


def load_split(config_name: str, source: str, data_dir: str | Path | None = None,
               hub_id: str = HUB_ID) -> Dataset:
    """Load one TOFU configuration from the hub or a local directory and validate it."""
    if source == "hub":
        try:
            ds = load_dataset(hub_id, config_name, split="train")
        except Exception as err:  # offline mode, missing credentials, typos in the id
            raise RuntimeError(f"could not load {hub_id!r} configuration {config_name!r} from the "
                               f"Hugging Face Hub: {err}") from err
        return validate_schema(ds, config_name, origin=hub_id)
    if source in ("local", "embedded"):
        if data_dir is None:
            raise ValueError(f"task.data_dir is required for task.source={source}")
        path = Path(data_dir) / f"{config_name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"TOFU configuration {config_name!r} not found: {path} does not exist")
        ds = load_dataset("json", data_files={"train": str(path)}, split="train")
        return validate_schema(ds, config_name, origin=str(path))
    raise ValueError(f"task.source must be hub, local or embedded, got {source!r}")


@dataclass
class TofuSplits:
    """The training and evaluation sets of one TOFU unlearning run."""

    forget: Dataset
    retain: Dataset
    eval_sets: dict[str, Dataset]  # forget / retain / real_authors / world_facts (perturbed configs)
    holdout: Dataset | None


EVAL_CONFIGS = {"retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
                "world_facts": "world_facts_perturbed"}


def load_tofu(forget_split: str, retain_split: str, holdout_split: str | None, source: str,
              data_dir: str | Path | None = None, hub_id: str = HUB_ID) -> TofuSplits:
    """Load everything a TOFU run needs, checking the split pair before any download."""
    check_split_pair(forget_split, retain_split)

    def load(name: str) -> Dataset:
        return load_split(name, source, data_dir, hub_id)

    eval_sets = {"forget": load(f"{forget_split}_perturbed")}
    eval_sets.update({key: load(name) for key, name in EVAL_CONFIGS.items()})
    return TofuSplits(forget=load(forget_split), retain=load(retain_split), eval_sets=eval_sets,
                      holdout=load(holdout_split) if holdout_split else None)
