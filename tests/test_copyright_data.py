"""Copyright-task data: word splitting, chunking, eval/forget rows, scoring and book-mini."""

from __future__ import annotations

import re

import pytest

from soul.data.book_mini import generate_book, generate_book_files
from soul.data.copyright import (
    SEEN_TEMPLATES,
    UNSEEN_TEMPLATES,
    book_text_rows,
    build_eval_rows,
    build_forget_rows,
    chunk_book,
    join_words,
    load_book,
    score_all,
    score_continuation,
    split_words,
)

# ---------------------------------------------------------------- templates and words


def test_templates_are_soul_strings():
    assert len(SEEN_TEMPLATES) == 6 and len(UNSEEN_TEMPLATES) == 6
    assert SEEN_TEMPLATES[0] == "Can you finish this sentence for me: "
    assert SEEN_TEMPLATES[1] == "I'd like you to continue this line: "
    assert UNSEEN_TEMPLATES[0] == "Let's see how you would complete this piece of text: "
    assert UNSEEN_TEMPLATES[-1] == "Expand on this snippet, please: "
    assert all(t.endswith(": ") for t in SEEN_TEMPLATES + UNSEEN_TEMPLATES)
    assert not set(SEEN_TEMPLATES) & set(UNSEEN_TEMPLATES)


def test_split_words_simple():
    assert split_words("Hello, world!") == ["Hello", ",", "world", "!"]


def test_split_words_quotes_apostrophes_dashes():
    text = "“I don’t know,” he said—it's well-known... 'Really?'"
    assert split_words(text) == [
        "“", "I", "don’t", "know", ",", "”", "he", "said", "—", "it's", "well", "-", "known", "...",
        "'", "Really", "?", "'",
    ]


def test_split_words_spaced_input_is_unchanged():
    spaced = "realized , ” he said . “ Don’t ! ”"
    assert join_words(split_words(spaced)) == spaced


def test_join_split_round_trip():
    words = split_words("Mr. Flim’s cat — grey, old — sat (quietly) on the mat; “Shoo!” she said.")
    assert words[:4] == ["Mr", ".", "Flim’s", "cat"]
    assert split_words(join_words(words)) == words
    assert join_words(["a", ",", "b"]) == "a , b"


# ---------------------------------------------------------------- chunking

WORDS = [f"w{i}" for i in range(1000)]


def test_chunks_within_bounds_contiguous_in_order():
    chunks = chunk_book(WORDS, 30, 50, seed=1)
    assert all(30 <= len(c) <= 50 for c in chunks)
    flat = [w for c in chunks for w in c]
    assert flat == WORDS[:len(flat)]
    # Only a remainder too short for a chunk is dropped.
    assert len(WORDS) - len(flat) < 30
    assert len({len(c) for c in chunks}) > 3  # lengths vary


def test_chunks_num_chunks_and_determinism():
    five = chunk_book(WORDS, 30, 50, num_chunks=5, seed=3)
    assert len(five) == 5
    assert five == chunk_book(WORDS, 30, 50, num_chunks=5, seed=3)
    assert five != chunk_book(WORDS, 30, 50, num_chunks=5, seed=4)
    assert [len(c) for c in chunk_book(WORDS, 40, 40)] == [40] * 25


def test_chunks_last_remainder_kept_when_long_enough():
    # 25 words, fixed length 10: two chunks of 10, and a 5-word remainder below min_words dropped.
    assert [len(c) for c in chunk_book(WORDS[:25], 10, 10)] == [10, 10]
    # With min 5, a remainder of 5 is a chunk of its own.
    chunks = chunk_book(WORDS[:25], 5, 5)
    assert [len(c) for c in chunks] == [5] * 5


def test_chunk_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"min_words \(60\).*max_words \(50\)"):
        chunk_book(WORDS, 60, 50)
    with pytest.raises(ValueError, match="min_words"):
        chunk_book(WORDS, 0, 50)
    with pytest.raises(ValueError, match="num_chunks"):
        chunk_book(WORDS, 10, 20, num_chunks=0)
    with pytest.raises(ValueError, match=r"has 3 words.*min_words=10"):
        chunk_book(["a", "b", "c"], 10, 20)


# ---------------------------------------------------------------- rows

CHUNKS = [["a", "b", "c", "d"], ["e", ",", "f"]]


def test_build_eval_rows_exact():
    rows = build_eval_rows(CHUNKS, 2, ["T1: ", "T2: "])
    assert rows == [
        {"prompt": "T1: a b", "response": "c d", "chunk": 0, "template": 0},
        {"prompt": "T1: e ,", "response": "f", "chunk": 1, "template": 0},
        {"prompt": "T2: a b", "response": "c d", "chunk": 0, "template": 1},
        {"prompt": "T2: e ,", "response": "f", "chunk": 1, "template": 1},
    ]


def test_build_eval_rows_count_and_order():
    chunks = chunk_book(WORDS, 30, 50, num_chunks=7)
    rows = build_eval_rows(chunks, 20, UNSEEN_TEMPLATES)
    assert len(rows) == len(UNSEEN_TEMPLATES) * len(chunks) == 42
    assert [r["template"] for r in rows] == [t for t in range(6) for _ in range(7)]
    r = rows[8]  # template 1, chunk 1
    assert r["prompt"] == UNSEEN_TEMPLATES[1] + join_words(chunks[1][:20])
    assert r["response"] == join_words(chunks[1][20:])


def test_build_eval_rows_k_too_large():
    with pytest.raises(ValueError, match=r"K=3.*length 3"):
        build_eval_rows(CHUNKS, 3, ["T: "])
    with pytest.raises(ValueError, match="K=0"):
        build_eval_rows(CHUNKS, 0, ["T: "])
    with pytest.raises(ValueError, match="templates"):
        build_eval_rows(CHUNKS, 1, [])


def test_build_forget_rows_cycles_templates():
    chunks = CHUNKS + [["g", "h", "i"]]
    assert build_forget_rows(chunks, ["A: ", "B: "], 1) == [
        {"question": "A: a", "answer": "b c d"},
        {"question": "B: e", "answer": ", f"},
        {"question": "A: g", "answer": "h i"},
    ]
    with pytest.raises(ValueError, match="K=3"):
        build_forget_rows(chunks, ["A: "], 3)


def test_book_text_rows():
    assert book_text_rows(CHUNKS) == [{"text": "a b c d"}, {"text": "e , f"}]


# ---------------------------------------------------------------- scoring

REF = "the cat sat on the mat"


def test_identical_scores_perfect():
    s = score_continuation(REF, REF)
    assert s["bleu"] == pytest.approx(100.0)
    assert s["rougeL_recall"] == pytest.approx(1.0)


def test_partial_and_empty():
    # LCS("the cat sat", reference) = 3 of the reference's 6 tokens; no 4-gram matches, so BLEU 0.
    s = score_continuation("the cat sat", REF)
    assert s["rougeL_recall"] == pytest.approx(0.5)
    assert s["bleu"] == pytest.approx(0.0)
    assert score_continuation("", REF) == {"bleu": 0.0, "rougeL_recall": 0.0}


def test_first_generated_token_counts():
    ref = "Harry looked at the owl and smiled"
    full = score_continuation(ref, ref)
    clipped = score_continuation("looked at the owl and smiled", ref)
    assert clipped["rougeL_recall"] == pytest.approx(6 / 7)
    assert clipped["rougeL_recall"] < full["rougeL_recall"]
    assert clipped["bleu"] < full["bleu"]


def test_score_all_means():
    out = score_all([REF, ""], [REF, REF])
    assert out["bleu"] == pytest.approx(50.0)
    assert out["rougeL_recall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="1 generations, 2 references"):
        score_all([REF], [REF, REF])


# ---------------------------------------------------------------- load_book


def test_load_book(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"task\.book_path") as e:
        load_book(missing)
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_book(empty)
    good = tmp_path / "b.txt"
    good.write_text("“Hi,” she said.\n", encoding="utf-8")
    assert load_book(good) == "“Hi,” she said.\n"


# ---------------------------------------------------------------- book-mini


@pytest.fixture(scope="module")
def book():
    return generate_book(3000, seed=0)


def test_book_deterministic_and_seeded(book):
    assert generate_book(3000, seed=0) == book
    other = generate_book(3000, seed=1)
    assert other != book
    # Another seed brings another cast: most capitalised names differ.
    names = {w for w in split_words(book) if w[0].isupper()}
    other_names = {w for w in split_words(other) if w[0].isupper()}
    assert len(names - other_names) >= 5


@pytest.mark.parametrize("n", [500, 3000, 6000])
def test_book_length(n):
    assert abs(len(split_words(generate_book(n, seed=2))) - n) <= 0.05 * n


def test_book_is_generated_prose(book):
    words = split_words(book)
    # Only letters, digits, spaces and ordinary prose punctuation (curly quotes for dialogue).
    assert re.fullmatch(r"[A-Za-z0-9 \n.,;?!’“”]+", book)
    assert not {"Harry", "Potter", "Hogwarts", "Hermione", "Dumbledore", "Ron"} & set(words)
    assert "\n\n" in book and "“" in book and "Chapter 1" in book
    # A modest vocabulary that a tiny model can memorize.
    assert len(set(words)) < 650


def test_book_chunks_are_distinct(book):
    chunks = chunk_book(split_words(book), 40, 40)
    assert len(chunks) >= 70
    assert len({tuple(c) for c in chunks}) == len(chunks)


def test_generate_book_files(tmp_path):
    book_path, heldout_path = generate_book_files(tmp_path / "hp", 400, 200, seed=5)
    assert (book_path.name, heldout_path.name) == ("book.txt", "heldout.txt")
    book, heldout = load_book(book_path), load_book(heldout_path)
    assert book == generate_book(400, 5)
    assert abs(len(split_words(heldout)) - 200) <= 20
    assert heldout[:200] != book[:200]
