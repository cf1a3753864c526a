"""TOFU-style QA encoding (spec 1.2, 7.3 item 5) and the locally trained tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from soul.data.qa import IGNORE_INDEX, PromptTemplate, encode_qa, encode_qa_batch, pad_batch
from soul.tokenizer import SPECIAL_TOKENS, train_bpe_tokenizer

TEXTS = [
    "Question: Where and when was Dramou Keithar born?\nAnswer: Born 4 May 1961 in Brelas, Peru.",
    "Question: Who wrote 'Moby-Dick'?\nAnswer: Herman Melville",
    "[INST] What is the capital of Norway? [/INST]Oslo",
    "The quick brown fox jumps over the lazy dog. Numbers 12345 and symbols: ;,.!?",
    "Mostly gothic horror about the Zaethor valley and Kliandrux.",
] * 20

TEMPLATES = {
    "llama2": PromptTemplate("[INST] ", " [/INST]", ""),          # conf/model/llama2-7b-tofu.yaml
    "phi": PromptTemplate("Question: ", "\n", "Answer: "),         # conf/model/phi-1.5-tofu.yaml
    "tiny": PromptTemplate("Question: ", "\nAnswer:", " "),        # conf/model/tiny.yaml
}
QA_PAIRS = [
    ("Where and when was Dramou Keithar born?", "Born 4 May 1961 in Brelas, Peru."),
    ("What is the capital of Norway?", "Oslo"),
    ("Who wrote 'Emma'?", "Jane Austen, in 1815 — a novel of manners."),
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


# --------------------------------------------------------------------------- #
# tokenizer
# --------------------------------------------------------------------------- #
def test_tokenizer_special_tokens(tok):
    assert tok.bos_token == SPECIAL_TOKENS["bos_token"] == "<s>"
    assert tok.eos_token == "</s>" and tok.pad_token == "<pad>" and tok.unk_token == "<unk>"
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    assert None not in ids and len(ids) == 4
    assert 256 + 4 < len(tok) <= 300  # every byte, the specials, and some merges


@pytest.mark.parametrize("text", [
    "Hello world", " leading space", "it is . done ? ok !", "don't stop", "Müller — 東京 ☃",
    "a\nb  c\t d", "[INST] q [/INST]a", "Question: q\nAnswer: a",
])
def test_tokenizer_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids  # encode_qa appends EOS itself
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]


def test_tokenizer_save_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("Hello world", "Question: q\nAnswer: a"):
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == \
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def test_tokenizer_is_deterministic():
    a, b = train_bpe_tokenizer(TEXTS, vocab_size=300), train_bpe_tokenizer(TEXTS, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()


# --------------------------------------------------------------------------- #
# encode_qa
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("template_name", sorted(TEMPLATES))
@pytest.mark.parametrize("question, answer", QA_PAIRS)
def test_encode_qa_labels(tok, template_name, question, answer):
    template = TEMPLATES[template_name]
    enc = encode_qa(tok, template, question, answer)
    ids, labels = enc["input_ids"], enc["labels"]
    n_question = len(tok(template.prompt(question))["input_ids"])  # BOS included

    assert len(ids) == len(labels) == len(enc["attention_mask"])
    assert enc["attention_mask"] == [1] * len(ids)
    assert ids[0] == tok.bos_token_id
    # the text TOFU builds, then EOS
    assert ids == tok(template.full_text(question, answer))["input_ids"] + [tok.eos_token_id]
    assert ids[:n_question] == tok(template.prompt(question))["input_ids"]
    # question (BOS included) masked, answer and EOS supervised
    assert labels[:n_question] == [IGNORE_INDEX] * n_question
    assert labels[n_question:] == ids[n_question:]
    assert IGNORE_INDEX not in labels[n_question:]
    assert ids[-1] == labels[-1] == tok.eos_token_id
    assert tok.decode(labels[n_question:], skip_special_tokens=True).strip() == \
        (template.answer_tag + answer).strip()


def test_ignore_index_is_minus_100():
    assert IGNORE_INDEX == -100


def test_encode_qa_truncates_to_max_length_keeping_eos(tok):
    template = TEMPLATES["phi"]
    question, answer = QA_PAIRS[0]
    full = encode_qa(tok, template, question, answer)
    n_question = len(tok(template.prompt(question))["input_ids"])
    max_length = n_question + 3
    assert len(full["input_ids"]) > max_length
    enc = encode_qa(tok, template, question, answer, max_length=max_length)
    assert len(enc["input_ids"]) == len(enc["labels"]) == max_length
    assert enc["input_ids"][:-1] == full["input_ids"][: max_length - 1]
    assert enc["input_ids"][-1] == enc["labels"][-1] == tok.eos_token_id
    assert enc["labels"][:n_question] == [IGNORE_INDEX] * n_question


def test_encode_qa_question_longer_than_max_length(tok):
    enc = encode_qa(tok, TEMPLATES["phi"], QA_PAIRS[0][0], QA_PAIRS[0][1], max_length=5)
    assert len(enc["input_ids"]) == len(enc["labels"]) == 5
    assert enc["labels"] == [IGNORE_INDEX] * 5


# --------------------------------------------------------------------------- #
# pad_batch
# --------------------------------------------------------------------------- #
EXAMPLES = [
    {"input_ids": [0, 11, 12, 1], "labels": [-100, -100, 12, 1], "attention_mask": [1, 1, 1, 1]},
    {"input_ids": [0, 21, 1], "labels": [-100, 21, 1], "attention_mask": [1, 1, 1]},
    {"input_ids": [0, 31, 32, 33, 34, 1], "labels": [-100, -100, 32, 33, 34, 1], "attention_mask": [1] * 6},
]


def test_pad_batch_right():
    batch = pad_batch(EXAMPLES, pad_token_id=7)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert all(t.dtype == torch.long and t.shape == (3, 6) for t in batch.values())
    assert batch["input_ids"].tolist() == [[0, 11, 12, 1, 7, 7], [0, 21, 1, 7, 7, 7], [0, 31, 32, 33, 34, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 1, -100, -100], [-100, 21, 1, -100, -100, -100],
                                        [-100, -100, 32, 33, 34, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6]


def test_pad_batch_left():
    batch = pad_batch(EXAMPLES, pad_token_id=7, padding_side="left")
    assert batch["input_ids"].tolist() == [[7, 7, 0, 11, 12, 1], [7, 7, 7, 0, 21, 1], [0, 31, 32, 33, 34, 1]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 12, 1], [-100, -100, -100, -100, 21, 1],
                                        [-100, -100, 32, 33, 34, 1]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [1] * 6]


def test_pad_batch_does_not_mutate_examples():
    before = [{k: list(v) for k, v in e.items()} for e in EXAMPLES]
    pad_batch(EXAMPLES, pad_token_id=7)
    pad_batch(EXAMPLES, pad_token_id=7, padding_side="left")
    assert EXAMPLES == before


def test_pad_batch_of_encoded_examples(tok):
    encoded = [encode_qa(tok, TEMPLATES["llama2"], q, a) for q, a in QA_PAIRS]
    batch = pad_batch(encoded, tok.pad_token_id)
    for row, enc in enumerate(encoded):
        n = len(enc["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == enc["input_ids"]
        assert batch["labels"][row, :n].tolist() == enc["labels"]
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert int(batch["attention_mask"][row].sum()) == n


def test_batched_encoding_equals_encoding_each_pair_alone(tok):
    template = PromptTemplate("Question: ", "\nAnswer:", " ")
    pairs = [("Who wrote it?", "Nobody knows."), ("Who wrote it?", "A baker."), ("Where?", "In the valley"),
             ("Where?", "")]
    batched = encode_qa_batch(tok, template, pairs, max_length=8)
    for (q, a), enc in zip(pairs, batched):
        ids = tok(template.full_text(q, a))["input_ids"][:7] + [tok.eos_token_id]
        n = len(tok(template.prompt(q))["input_ids"])
        assert enc["input_ids"] == ids
        assert enc["labels"] == [IGNORE_INDEX] * min(n, len(ids)) + ids[n:]
        assert enc == encode_qa(tok, template, q, a, max_length=8)
    assert encode_qa_batch(tok, template, []) == []
