"""The hub models are wired as TOFU publishes them (spec 1.2, 7.3), checked without network.

``from_pretrained`` is replaced by call recorders and the model configs are composed by
Hydra exactly as ``python -m soul.run model=...`` composes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

import soul.models as models
import soul.run  # noqa: F401  (registers the OmegaConf resolvers the config uses)
from soul.models import load_pretrained, template_from_config

REPO = Path(__file__).resolve().parents[1]

# Spec 1.2: TOFU's fine-tuned hub models and their prompt templates.
HUB_MODELS = {
    "llama2-7b-tofu": ("locuslab/tofu_ft_llama2-7b", "[INST] q [/INST]a", "[INST] q [/INST]"),
    "phi-1.5-tofu": ("locuslab/tofu_ft_phi-1.5", "Question: q\nAnswer: a", "Question: q\n"),
}


def compose(*overrides: str):
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra.compose("config", overrides=list(overrides))


class FakeTokenizer:
    def __init__(self, pad_token=None, eos_token="</s>"):
        self.pad_token = pad_token
        self.eos_token = eos_token


class Recorder:
    """Records ``from_pretrained`` calls and returns a fixed object."""

    def __init__(self, result):
        self.result = result
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


@pytest.fixture
def recorders(monkeypatch):
    tokenizer, model = FakeTokenizer(), object()
    tok_rec, model_rec = Recorder(tokenizer), Recorder(model)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", tok_rec)
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", model_rec)
    return tok_rec, model_rec


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_hub_model_loaded_as_configured(recorders, name):
    tok_rec, model_rec = recorders
    hub_id = HUB_MODELS[name][0]
    cfg = compose(f"model={name}")
    assert cfg.model.source == "hub"
    model, tokenizer = load_pretrained(cfg.model.hub_id, cfg.model.dtype, cfg.model.attn_implementation,
                                       cfg.model.trust_remote_code)
    assert model is model_rec.result and tokenizer is tok_rec.result

    assert len(tok_rec.calls) == 1 and len(model_rec.calls) == 1
    (tok_args, tok_kwargs), (model_args, model_kwargs) = tok_rec.calls[0], model_rec.calls[0]
    assert tok_args == (hub_id,)
    assert tok_kwargs == {"trust_remote_code": False}
    assert model_args == (hub_id,)
    # fp32 master weights by default (bf16 autocast on a GPU); SOUL's pure bf16 is model.dtype=bfloat16
    assert model_kwargs == {"dtype": torch.float32, "attn_implementation": "sdpa", "trust_remote_code": False}
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # TOFU: pad = eos


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_task_loads_the_hub_id(name):
    """What soul.run hands to load_pretrained for a hub model is the configured hub id."""
    from soul.tasks.tofu import TofuTask

    cfg = compose(f"model={name}", "task.source=hub")
    assert TofuTask(cfg).model_name() == HUB_MODELS[name][0]


def test_existing_pad_token_kept(monkeypatch):
    tokenizer = FakeTokenizer(pad_token="<pad>")
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", Recorder(tokenizer))
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", Recorder(object()))
    _, tok = load_pretrained("some/model")
    assert tok.pad_token == "<pad>"


def test_defaults_and_local_path(recorders, tmp_path):
    tok_rec, model_rec = recorders
    load_pretrained(tmp_path)  # a Path is passed on as a string
    assert tok_rec.calls[0][0] == (str(tmp_path),)
    assert model_rec.calls[0] == ((str(tmp_path),), {"dtype": torch.float32, "attn_implementation": "sdpa",
                                                    "trust_remote_code": False})


def test_bad_dtype_fails_before_loading(recorders):
    tok_rec, model_rec = recorders
    with pytest.raises(ValueError, match="model.dtype"):
        load_pretrained("locuslab/tofu_ft_llama2-7b", "bf16")
    assert not tok_rec.calls and not model_rec.calls


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_prompt_templates(name):
    _, full, prompt = HUB_MODELS[name]
    template = template_from_config(compose(f"model={name}").model)
    assert template.full_text("q", "a") == full
    assert template.prompt("q") == prompt  # the tokens TOFU masks


def test_offline_failure_names_model(tmp_path):
    hub_id = "locuslab/tofu_ft_llama2-7b"
    code = (
        "from soul.models import load_pretrained\n"
        "try:\n"
        f"    load_pretrained({hub_id!r})\n"
        "except Exception as err:\n"
        "    print(type(err).__name__)\n"
        "    print(err)\n"
        "else:\n"
        "    print('NO ERROR')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kind, _, message = proc.stdout.partition("\n")
    assert kind == "OSError", proc.stdout
    assert hub_id in message
