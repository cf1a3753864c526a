"""Load a causal LM and its tokenizer: from the hub, from a local directory, or the tiny one.

The tiny model is a small Llama built from a config; it is only ever created by
``soul.embedded`` (which trains it and caches it on disk) and loaded back from there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from soul.data.qa import PromptTemplate

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_mixed_precision(setting: str, device_setting: str = "auto") -> str:
    """accelerate's mixed-precision mode for ``mixed_precision=auto|no|bf16|fp16``: auto is bf16 on a
    GPU that supports it (the weights stay fp32: master weights) and no otherwise."""
    if setting != "auto":
        return setting
    on_gpu = device_setting != "cpu" and torch.cuda.is_available()
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"


def template_from_config(model_cfg: DictConfig) -> PromptTemplate:
    t = model_cfg.template
    return PromptTemplate(question_start=t.question_start, question_end=t.question_end,
                          answer_tag=t.answer_tag)


def build_tiny_llama(arch: DictConfig, tokenizer) -> LlamaForCausalLM:
    """A randomly initialised small Llama sized by ``model.architecture``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def load_pretrained(name_or_path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
                    trust_remote_code: bool = False):
    """``from_pretrained`` for model and tokenizer; a hub id or a local directory.

    The tokenizer gets ``pad = eos`` when it has no pad token, as TOFU does.
    """
    name = str(name_or_path)
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code)
    except OSError as err:
        raise OSError(f"could not load model {name!r}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def apply_lora(model, r: int = 8, alpha: float = 32, dropout: float = 0.05, target_modules="all-linear"):
    """Wrap ``model`` with peft LoRA adapters; only the adapters train. ``all-linear`` is every
    linear layer but the output head (SOUL's Llama setting: r 8, alpha 32, dropout 0.05)."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got r={r!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model):
    """Fold LoRA adapters into the base weights and return the plain transformers model."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
