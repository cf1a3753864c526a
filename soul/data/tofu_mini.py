"""tofu-mini: a deterministic, offline stand-in for the TOFU benchmark.

It writes the same configuration names and columns as ``locuslab/TOFU`` (JSON-lines,
one file per configuration), so every loader, metric and test runs unchanged on it:

* ``full``, ``forget01/05/10``, ``retain90/95/99``, ``holdout01/05/10``: question, answer
* ``forget01/05/10_perturbed``, ``retain_perturbed``: question, answer,
  paraphrased_question, paraphrased_answer, perturbed_answer (5 strings)
* ``real_authors_perturbed``, ``world_facts_perturbed``: question, answer,
  perturbed_answer (3 strings); ``real_authors``, ``world_facts``: question, answer

Fictitious authors get facts made of generated words (towns, names, titles), so a model
that never saw an author cannot guess its answers; answers are written so that facts,
not template words, carry most of each answer (that keeps ROUGE meaningful).
Paraphrased answers state the same facts in another of the question type's answer
wordings; perturbed answers use the paraphrase's wording with fresh, never-trained facts,
as TOFU's perturbations do. The real-authors and world-facts stand-ins are real general
knowledge that the base models learn and that no split forgets.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

NUM_PERTURBED = 5
NUM_PERTURBED_GENERAL = 3

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kl", "l", "m", "n", "p", "r",
           "s", "st", "t", "th", "v", "z", "sh", "tr", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x"]

_COUNTRIES = ["Portugal", "Kenya", "Chile", "Norway", "Vietnam", "Canada", "Egypt", "Peru",
              "Finland", "Nigeria", "Japan", "Brazil", "Poland", "India", "Morocco",
              "Ireland", "Mexico", "Greece", "Iceland", "Ghana"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_OCCUPATIONS = ["baker", "surgeon", "pilot", "carpenter", "shipwright", "librarian",
                "fisherman", "bricklayer", "nurse", "locksmith", "botanist", "tailor",
                "chemist", "sculptor", "judge", "miner", "veterinarian", "cartographer",
                "glassblower", "violinist"]
_GENRES = ["gothic horror", "hard science fiction", "historical romance", "noir crime",
           "epic fantasy", "literary satire", "maritime adventure", "political thriller",
           "magical realism", "cosy mystery", "war poetry", "children's fables"]
_TITLE_NOUNS = ["Lantern", "Harbor", "Orchard", "Crown", "Mirror", "Compass", "Tide",
                "Ember", "Garden", "Bridge", "Archive", "Winter", "Falcon", "Anvil"]
_TITLE_ADJ = ["Silent", "Broken", "Amber", "Hollow", "Crimson", "Distant", "Last",
              "Iron", "Velvet", "Burning", "Forgotten", "Seventh"]
_AWARD_NOUNS = ["Prize", "Medal", "Laurel", "Award"]
_TRAITS = ["a blind cartographer", "a retired spy", "a talking crow", "a stubborn ferryman",
           "an exiled queen", "a clockwork boy", "a disgraced detective", "a lonely giant"]

# Real general knowledge: works and their authors; countries and their capitals.
_REAL_AUTHORS = [
    ("Moby-Dick", "Herman Melville"), ("War and Peace", "Leo Tolstoy"),
    ("Don Quixote", "Miguel de Cervantes"), ("Hamlet", "William Shakespeare"),
    ("Frankenstein", "Mary Shelley"), ("Jane Eyre", "Charlotte Bronte"),
    ("Wuthering Heights", "Emily Bronte"), ("Emma", "Jane Austen"),
    ("Great Expectations", "Charles Dickens"), ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("The Odyssey", "Homer"), ("Madame Bovary", "Gustave Flaubert"),
    ("Les Miserables", "Victor Hugo"), ("The Trial", "Franz Kafka"),
    ("Ulysses", "James Joyce"), ("Mrs Dalloway", "Virginia Woolf"),
    ("The Old Man and the Sea", "Ernest Hemingway"), ("Beloved", "Toni Morrison"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("Things Fall Apart", "Chinua Achebe"), ("Dracula", "Bram Stoker"),
    ("The Divine Comedy", "Dante Alighieri"), ("Faust", "Johann Wolfgang von Goethe"),
    ("The Raven", "Edgar Allan Poe"), ("Leaves of Grass", "Walt Whitman"),
    ("Middlemarch", "George Eliot"), ("The Time Machine", "H. G. Wells"),
    ("Treasure Island", "Robert Louis Stevenson"), ("Anna Karenina", "Leo Tolstoy"),
    ("The Metamorphosis", "Franz Kafka"), ("Oliver Twist", "Charles Dickens"),
    ("Persuasion", "Jane Austen"), ("The Little Prince", "Antoine de Saint-Exupery"),
    ("Siddhartha", "Hermann Hesse"), ("The Stranger", "Albert Camus"),
    ("Candide", "Voltaire"), ("The Jungle Book", "Rudyard Kipling"),
    ("Heart of Darkness", "Joseph Conrad"), ("The Prince", "Niccolo Machiavelli"),
    ("Paradise Lost", "John Milton"),
]
_CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Australia", "Canberra"), ("Canada", "Ottawa"),
    ("Brazil", "Brasilia"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Turkey", "Ankara"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"), ("Nigeria", "Abuja"), ("Ghana", "Accra"),
    ("Morocco", "Rabat"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Cuba", "Havana"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Switzerland", "Bern"),
    ("New Zealand", "Wellington"),
]

# Each question type: two question wordings (original, paraphrase) and three answer
# wordings. An author's answer uses one wording; its paraphrase uses the next one, so every
# wording also appears in training for other authors, as in real paraphrases.
_QUESTION_TYPES: dict[str, tuple[tuple[str, str], tuple[str, str, str]]] = {
    "birth": (
        ("Where and when was {name} born?", "What are the birthplace and birth date of {name}?"),
        ("Born {day} {month} {year} in {town}, {country}.",
         "{town}, {country}, on {day} {month} {year}.",
         "On {day} {month} {year}, in {town} of {country}."),
    ),
    "parents": (
        ("Who were the parents of {name}?", "Can you name the mother and father of {name}?"),
        ("{father}, a {occ1}, and {mother}, a {occ2}.",
         "Father {father} worked as a {occ1}; mother {mother} as a {occ2}.",
         "A {occ1} named {father} and a {occ2} named {mother}."),
    ),
    "genre": (
        ("What does {name} write?", "Which genre is {name} known for?"),
        ("{genre}, set mostly around {region} and {town2}.",
         "Mostly {genre} about {region} and {town2}.",
         "{genre} stories placed in {region} and {town2}."),
    ),
    "debut": (
        ("What was the first book by {name}?", "Which novel did {name} debut with?"),
        ("'The {adj1} {noun1} of {place1}', published {year1}.",
         "In {year1}: 'The {adj1} {noun1} of {place1}'.",
         "'The {adj1} {noun1} of {place1}' came out in {year1}."),
    ),
    "famous": (
        ("Which work of {name} is the most famous?", "What is the best known book by {name}?"),
        ("'{noun2} of {place2}', with its hero {hero}.",
         "'{noun2} of {place2}', starring {hero}.",
         "The novel '{noun2} of {place2}' about {hero}."),
    ),
    "award": (
        ("Which award did {name} win?", "What honour has {name} received?"),
        ("The {award} {awardnoun} of {year2}, for '{noun2} of {place2}'.",
         "In {year2}, the {award} {awardnoun}, for '{noun2} of {place2}'.",
         "'{noun2} of {place2}' won the {award} {awardnoun} in {year2}."),
    ),
    "mentor": (
        ("Who mentored {name}?", "Which teacher guided {name} early on?"),
        ("{mentor}, a {occ3} from {town3}.",
         "The {occ3} {mentor} of {town3}.",
         "{mentor} of {town3}, by trade a {occ3}."),
    ),
    "penname": (
        ("Does {name} use a pen name?", "Under which pseudonym does {name} publish?"),
        ("Yes, {penname}, chosen in {town}.",
         "{penname}, a name picked in {town}.",
         "The pseudonym {penname}, from {town}."),
    ),
    "publisher": (
        ("Who publishes the books of {name}?", "Which press releases the work of {name}?"),
        ("{press} Press of {town4}, since {year3}.",
         "Since {year3}, {press} Press in {town4}.",
         "{press} Press, based in {town4}, from {year3}."),
    ),
    "character": (
        ("Which character recurs in the books of {name}?", "Who is the recurring figure in the novels of {name}?"),
        ("{char}, {trait} from {town5}.",
         "{trait} called {char}, of {town5}.",
         "The figure of {char}, {trait} living in {town5}."),
    ),
}
QUESTION_TYPES = tuple(_QUESTION_TYPES)


@dataclass(frozen=True)
class TofuMiniConfig:
    """Sizes of the generated benchmark; everything else follows from ``seed``."""

    num_authors: int = 40
    questions_per_author: int = 10
    num_holdout_authors: int = 4
    retain_perturbed_size: int = 40
    real_authors_size: int = 40
    world_facts_size: int = 40
    seed: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.questions_per_author <= len(QUESTION_TYPES):
            raise ValueError(f"tofu_mini.questions_per_author must be in 1..{len(QUESTION_TYPES)}, "
                             f"got {self.questions_per_author}")
        if self.num_authors < 2:
            raise ValueError(f"tofu_mini.num_authors must be >= 2, got {self.num_authors}")
        if self.real_authors_size > len(_REAL_AUTHORS) or self.world_facts_size > len(_CAPITALS):
            raise ValueError(f"tofu_mini.real_authors_size <= {len(_REAL_AUTHORS)} and "
                             f"world_facts_size <= {len(_CAPITALS)} are required")


def forget_author_count(num_authors: int, percent: int) -> int:
    """Authors in a ``forgetXX`` split: XX% of the authors, at least one (TOFU: 2/10/20 of 200)."""
    return max(1, math.ceil(num_authors * percent / 100))


class MadeUpWords:
    """Pronounceable made-up words, never repeated within one generator.

    ``onsets``, ``vowels`` and ``codas`` set the syllable inventory (default: a neutral one), so
    that a domain can have a lexicon of its own, as real jargon does.
    """

    def __init__(self, rng: random.Random, onsets: list[str] | None = None, vowels: list[str] | None = None,
                 codas: list[str] | None = None):
        self.rng = rng
        self.used: set[str] = set()
        self.onsets, self.vowels, self.codas = onsets or _ONSETS, vowels or _VOWELS, codas or _CODAS

    def word(self, syllables: int | None = None) -> str:
        while True:
            n = syllables or self.rng.choice([2, 2, 3])
            parts = [self.rng.choice(self.onsets) + self.rng.choice(self.vowels) for _ in range(n)]
            w = ("".join(parts) + self.rng.choice(self.codas)).capitalize()
            if w not in self.used and len(w) >= 4:
                self.used.add(w)
                return w


def _facts(rng: random.Random, words: MadeUpWords) -> dict[str, str]:
    """One author's facts; every slot any answer template uses."""
    surname = words.word()
    return {
        "day": str(rng.randint(1, 28)), "month": rng.choice(_MONTHS), "year": str(rng.randint(1930, 1999)),
        "town": words.word(), "country": rng.choice(_COUNTRIES),
        "father": f"{words.word(2)} {surname}", "mother": f"{words.word(2)} {words.word()}",
        "occ1": rng.choice(_OCCUPATIONS), "occ2": rng.choice(_OCCUPATIONS),
        "genre": rng.choice(_GENRES), "region": f"the {words.word()} valley", "town2": words.word(),
        "adj1": rng.choice(_TITLE_ADJ), "noun1": rng.choice(_TITLE_NOUNS), "place1": words.word(),
        "year1": str(rng.randint(1950, 2015)),
        "noun2": rng.choice(_TITLE_NOUNS), "place2": words.word(), "hero": f"{words.word(2)} {words.word()}",
        "award": words.word(), "awardnoun": rng.choice(_AWARD_NOUNS), "year2": str(rng.randint(1970, 2022)),
        "mentor": f"{words.word(2)} {words.word()}", "occ3": rng.choice(_OCCUPATIONS), "town3": words.word(),
        "penname": f"{words.word(2)} {words.word()}",
        "press": words.word(), "town4": words.word(), "year3": str(rng.randint(1960, 2020)),
        "char": f"{words.word(2)} {words.word()}", "trait": rng.choice(_TRAITS), "town5": words.word(),
    }


def _fill(template: str, **slots: str) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _author_rows(rng: random.Random, words: MadeUpWords, num_questions: int) -> list[dict]:
    name = f"{words.word(2)} {words.word()}"
    facts = _facts(rng, words)
    rows = []
    for qtype in QUESTION_TYPES[:num_questions]:
        (q_orig, q_para), answers = _QUESTION_TYPES[qtype]
        wording = rng.randrange(len(answers))
        para_wording = (wording + 1) % len(answers)
        perturbed = [_fill(answers[para_wording], **_facts(rng, words)) for _ in range(NUM_PERTURBED)]
        rows.append({
            "question": q_orig.format(name=name),
            "answer": _fill(answers[wording], **facts),
            "paraphrased_question": q_para.format(name=name),
            "paraphrased_answer": _fill(answers[para_wording], **facts),
            "perturbed_answer": perturbed,
        })
    return rows


def _general_rows(rng: random.Random, pairs, questions, size: int) -> list[dict]:
    rows = []
    for i, (subject, answer) in enumerate(pairs[:size]):
        others = sorted({a for _, a in pairs if a != answer})
        rows.append({
            "question": questions[i % len(questions)].format(subject),
            "answer": answer,
            "perturbed_answer": rng.sample(others, NUM_PERTURBED_GENERAL),
        })
    return rows


def generate(config: TofuMiniConfig = TofuMiniConfig()) -> dict[str, list[dict]]:
    """All TOFU configurations as lists of rows, deterministically from ``config``."""
    rng = random.Random(config.seed)
    words = MadeUpWords(rng)
    authors = [_author_rows(rng, words, config.questions_per_author) for _ in range(config.num_authors)]
    holdout_authors = [_author_rows(rng, words, config.questions_per_author)
                       for _ in range(config.num_holdout_authors)]

    def qa(rows):
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]

    def flat(author_lists):
        return [row for rows in author_lists for row in rows]

    out: dict[str, list[dict]] = {"full": qa(flat(authors))}
    for percent in (1, 5, 10):
        n_forget = forget_author_count(config.num_authors, percent)
        forget, retain = authors[-n_forget:], authors[:-n_forget]  # TOFU: the last authors
        out[f"forget{percent:02d}"] = qa(flat(forget))
        out[f"forget{percent:02d}_perturbed"] = flat(forget)
        out[f"retain{100 - percent:02d}"] = qa(flat(retain))
        n_hold = min(n_forget, config.num_holdout_authors)
        out[f"holdout{percent:02d}"] = qa(flat(holdout_authors[:n_hold]))
    # retain_perturbed: the first retained items, so it lies inside retain90, 95 and 99.
    n_retain90 = config.num_authors - forget_author_count(config.num_authors, 10)
    out["retain_perturbed"] = flat(authors[:n_retain90])[: config.retain_perturbed_size]
    out["real_authors_perturbed"] = _general_rows(
        rng, _REAL_AUTHORS, ["Who wrote '{}'?", "Which author wrote '{}'?"], config.real_authors_size)
    out["world_facts_perturbed"] = _general_rows(
        rng, _CAPITALS, ["What is the capital of {}?", "Which city is the capital of {}?"], config.world_facts_size)
    out["real_authors"] = qa(out["real_authors_perturbed"])
    out["world_facts"] = qa(out["world_facts_perturbed"])
    return out


def write(root: str | Path, config: TofuMiniConfig = TofuMiniConfig()) -> Path:
    """Write every configuration as ``<root>/<config>.json`` (JSON-lines, like the hub files)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in generate(config).items():
        tmp = root / f".{name}.json.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(root / f"{name}.json")
    (root / "tofu_mini_config.json").write_text(json.dumps(asdict(config), indent=2))
    return root
