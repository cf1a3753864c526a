"""The copyright task's real path: a hub or local model first memorizes the user's book (SOUL's
original models), fully or with merged LoRA adapters, cached; the OPT-2.7B and Llama-2-7B presets."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from hydra import compose, initialize_config_dir

from conftest import REPO
from soul import memorize
from soul.data import copyright as book
from soul.data.book_mini import generate_book
from soul.data.qa import PromptTemplate
from soul.finetune import finetune_mixed
from soul.models import build_tiny_llama, load_pretrained
from soul.tasks.copyright import CopyrightTask
from soul.tokenizer import train_bpe_tokenizer

TEMPLATE = PromptTemplate("### Question: ", "\n", "### Answer: ")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/unused", *overrides])


@pytest.fixture(scope="module")
def small_book(tmp_path_factory):
    """A generated book, chunked small, and a randomly initialised tiny Llama saved as a local model."""
    root = tmp_path_factory.mktemp("memorize")
    text = generate_book(400, seed=11)
    (root / "book.txt").write_text(text, encoding="utf-8")
    chunks = book.chunk_book(book.split_words(text), 50, 70, seed=0)
    tokenizer = train_bpe_tokenizer([text, *book.SEEN_TEMPLATES, TEMPLATE.question_start], vocab_size=400)
    torch.manual_seed(0)
    arch = OmegaConf.create({"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
                             "max_position_embeddings": 256})
    model = build_tiny_llama(arch, tokenizer)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return root, chunks


def memorize_settings(**overrides):
    return OmegaConf.create({"enabled": True, "lora": False, "dtype": "float32", "epochs": 8, "lr": 1e-2,
                             "batch_size": 4, "grad_accum": 2, "weight_decay": 0.0, "warmup_ratio": 0.0,
                             "max_grad_norm": 1.0, "max_length": 256, "seed": 0, **overrides})


def model_settings(lora_rank=4):
    return OmegaConf.create({"dtype": "float32", "attn_implementation": "sdpa", "trust_remote_code": False,
                             "lora_settings": {"r": lora_rank, "alpha": 16, "dropout": 0.0,
                                               "target_modules": "all-linear"}})


def book_loss(model_dir, chunks):
    model, tokenizer = load_pretrained(model_dir)
    rows = book.memorizing_rows(chunks, [10, 20], TEMPLATE)
    from soul.data.qa import encode_qa_batch, pad_batch
    examples = [e for t, r in rows for e in encode_qa_batch(tokenizer, t, [(x["question"], x["answer"]) for x in r])]
    with torch.no_grad():
        return model(**pad_batch(examples, tokenizer.pad_token_id)).loss.item()


def test_full_fine_tune_memorizes_the_book_and_is_cached(small_book, tmp_path, monkeypatch):
    root, chunks = small_book
    out = memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(), memorize_settings(),
                                          chunks, [10, 20], TEMPLATE)
    build = json.loads((out / "soul_build.json").read_text())
    # 2 pairs per chunk + 1 text row per chunk, batches of 4 x accumulation 2, 8 epochs.
    micro_batches = -(-3 * len(chunks) // 4)
    assert build["steps"] == 8 * -(-micro_batches // 2)
    assert book_loss(out, chunks) < 0.7 * book_loss(root / "base", chunks)
    assert build["lora"] is None and (out / "model.safetensors").is_file()
    # Cached: a second call (a grid's next job) does not fine-tune again.
    monkeypatch.setattr(memorize, "finetune_mixed", lambda *a, **k: pytest.fail("fine-tuned twice"))
    again = memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(), memorize_settings(),
                                            chunks, [10, 20], TEMPLATE)
    assert again == out
    # Any setting that changes the model gives another cache entry.
    monkeypatch.setattr(memorize, "finetune_mixed", lambda *a, **k: [1.0])
    other = memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(),
                                            memorize_settings(epochs=1), chunks, [10, 20], TEMPLATE)
    assert other != out


def test_lora_trains_only_adapters_and_is_merged(small_book, tmp_path, monkeypatch):
    root, chunks = small_book
    seen = {}

    def spy(model, *args, **kwargs):
        seen["trainable"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        return finetune_mixed(model, *args, **kwargs)

    monkeypatch.setattr(memorize, "finetune_mixed", spy)
    out = memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(),
                                          memorize_settings(lora=True, lr=1e-2), chunks, [10, 20], TEMPLATE)
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    # every linear layer of the blocks, not the output head (tied to the embeddings here)
    assert {n.split(".")[-4] for n in seen["trainable"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"}
    merged, base = load_file(out / "model.safetensors"), load_file(root / "base" / "model.safetensors")
    assert not any("lora" in k for k in merged) and merged.keys() == base.keys()
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    assert json.loads((out / "soul_build.json").read_text())["lora"]["r"] == 4
    assert book_loss(out, chunks) < book_loss(root / "base", chunks)


def test_bad_memorize_settings_are_named(small_book, tmp_path):
    root, chunks = small_book
    with pytest.raises(ValueError, match="task.memorize.epochs"):
        memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(), memorize_settings(epochs=0),
                                        chunks, [10, 20], TEMPLATE)
    with pytest.raises(ValueError, match="task.memorize.lr"):
        memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(), memorize_settings(lr=-1.0),
                                        chunks, [10, 20], TEMPLATE)
    with pytest.raises(ValueError, match="LoRA rank"):
        memorize.ensure_memorized_model(tmp_path, str(root / "base"), model_settings(lora_rank=0),
                                        memorize_settings(lora=True), chunks, [10, 20], TEMPLATE)
    assert not list((tmp_path / "memorized").glob("*/config.json"))  # nothing half-built left behind


@pytest.mark.parametrize("preset, hub_id, lora", [("opt-2.7b", "facebook/opt-2.7b", False),
                                                  ("llama2-7b", "meta-llama/Llama-2-7b-hf", True)])
def test_presets_memorize_the_users_book_first(small_book, tmp_path, monkeypatch, preset, hub_id, lora):
    """The real path, without the hub: the preset's model id goes to from_pretrained (recorded), the
    fine-tune runs with SOUL's settings (LoRA for Llama only) and unlearning starts from its result."""
    root, _ = small_book
    loads, fine_tunes = [], []

    def recorded_load(name, dtype="float32", *args):
        loads.append((name, dtype))
        return load_pretrained(root / "base", "float32")

    def recorded_finetune(model, tokenizer, groups, train_cfg, desc, device=None):
        fine_tunes.append((type(model).__name__, OmegaConf.to_container(train_cfg), groups))
        return [1.0]

    monkeypatch.setattr(memorize, "load_pretrained", recorded_load)
    monkeypatch.setattr(memorize, "finetune_mixed", recorded_finetune)
    (root / "heldout.txt").write_text(generate_book(200, seed=12), encoding="utf-8")
    overrides = ["task=copyright", f"model={preset}", "task.source=local", f"task.book_path={root}/book.txt",
                 f"task.heldout_path={root}/heldout.txt", f"task.retain_path={root}/heldout.txt",
                 "task.construction.chunk_words=[50,70]", "task.construction.prompt_words=[10,20]",
                 f"paths.cache_dir={tmp_path}"]
    cfg = composed(*overrides)
    assert cfg.model.hub_id == hub_id and cfg.model.dtype == "float32"
    task = CopyrightTask(cfg)
    template = PromptTemplate(**cfg.model.template)
    task.prepare(template)
    assert loads == [(hub_id, "float32")]  # fp32 master weights for the fine-tune
    (model_class, settings, groups), = fine_tunes
    assert model_class == ("PeftModelForCausalLM" if lora else "LlamaForCausalLM")
    assert {k: settings[k] for k in ("epochs", "lr", "batch_size", "grad_accum")} == \
        {"epochs": 10, "lr": 1e-5, "batch_size": 4, "grad_accum": 4}
    assert groups[0][0] == template and groups[0][1] == task.forget_rows  # the instruction pairs it later forgets
    assert task.model_name() == str(task.memorized_model) and task.memorized_model.parent.name == "memorized"
    # A model that has memorized the book already: no fine-tune, unlearning starts from the hub id.
    cfg = composed(*overrides, "task.memorize.enabled=false")
    task = CopyrightTask(cfg)
    task.prepare(template)
    assert task.model_name() == hub_id and len(loads) == 1
