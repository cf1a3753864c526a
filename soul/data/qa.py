"""Question-answer encoding with TOFU's conventions, shared by training and evaluation.

``text = question_start + question + question_end + answer_tag + answer``, tokenized with
special tokens (so a BOS leads when the tokenizer adds one), followed by EOS. Labels copy the
input ids with the first ``len(tokenize(question_start + question + question_end))`` positions
set to -100, as in TOFU's ``convert_raw_data_to_model_format``: the EOS is a target, the
question (BOS included) is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptTemplate:
    """TOFU's three template fields (``config/model_config.yaml`` in locuslab/tofu)."""

    question_start: str = ""
    question_end: str = ""
    answer_tag: str = ""

    def prompt(self, question: str) -> str:
        """The text the model answers from (TOFU masks exactly these tokens)."""
        return self.question_start + question + self.question_end

    def generation_prompt(self, question: str) -> str:
        """The prompt for generation: the answer tag is kept unless it is only whitespace,
        which BPE tokenizers would split off the first answer token."""
        return self.prompt(question) + self.answer_tag.rstrip()

    def full_text(self, question: str, answer: str) -> str:
        return self.prompt(question) + self.answer_tag + answer


def encode_qa(tokenizer, template: PromptTemplate, question: str, answer: str,
              max_length: int = 512) -> dict[str, list[int]]:
    """Token ids, labels and attention mask of one QA pair (no padding)."""
    return encode_qa_batch(tokenizer, template, [(question, answer)], max_length)[0]


def encode_qa_batch(tokenizer, template: PromptTemplate, pairs, max_length: int = 512) -> list[dict[str, list[int]]]:
    """``encode_qa`` for many pairs with two batched tokenizer calls (full texts, distinct prompts)."""
    pairs = list(pairs)
    if not pairs:
        return []
    full = tokenizer([template.full_text(q, a) for q, a in pairs], add_special_tokens=True)["input_ids"]
    questions = list(dict.fromkeys(q for q, _ in pairs))
    prompt_ids = tokenizer([template.prompt(q) for q in questions], add_special_tokens=True)["input_ids"]
    n_prompt = {q: len(ids) for q, ids in zip(questions, prompt_ids)}
    out = []
    for (q, _), ids in zip(pairs, full):
        ids = ids[: max_length - 1] + [tokenizer.eos_token_id]
        n = n_prompt[q]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * min(n, len(ids)) + ids[n:],
                    "attention_mask": [1] * len(ids)})
    return out


def pad_batch(examples: list[dict[str, list[int]]], pad_token_id: int,
              padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad encoded examples to one tensor batch (labels with -100, mask with 0)."""
    width = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    batch = {}
    for key, value in fill.items():
        rows = []
        for e in examples:
            pad = [value] * (width - len(e[key]))
            rows.append(e[key] + pad if padding_side == "right" else pad + e[key])
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch
