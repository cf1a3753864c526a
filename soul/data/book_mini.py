"""book-mini: a deterministic, made-up "book" standing in for the copyrighted novel.

The text is written from scratch by this generator: a story about a handful of characters with
made-up names in made-up places, told through narration, descriptions and dialogue in curly
quotes, in paragraphs and chapters. Sentences come from many templates filled with random choices
of common English words, so every stretch of text is distinct, yet the vocabulary stays small
(about 500 word types plus the names) so that a tiny model can memorize a few thousand words of it.
Another seed gives another book in the same style, with other names and events (held-out text for
perplexity, or retain text).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from soul.data.copyright import split_words
from soul.data.tofu_mini import MadeUpWords

NUM_CHARACTERS = 8
NUM_PLACES = 6

_OBJECTS = ["lamp", "key", "letter", "map", "book", "box", "coat", "hat", "cup", "kettle", "candle", "rope",
            "basket", "bottle", "ring", "coin", "knife", "spoon", "blanket", "chair", "table", "bell", "clock",
            "mirror", "broom", "bucket", "scarf", "boot", "glove", "pen", "bag", "jar", "plate", "stone",
            "feather", "shell", "drum", "flute", "compass", "chest", "ladder", "wheel", "shovel", "lantern",
            "envelope", "photograph", "umbrella", "whistle", "notebook", "blanket", "pillow", "necklace"]
_ROOMS = ["kitchen", "garden", "hall", "cellar", "attic", "library", "stairs", "bridge", "river", "forest",
          "meadow", "road", "station", "market", "chapel", "tower", "gate", "yard", "barn", "field", "hill",
          "lake", "shore", "harbour", "square", "shop", "corridor", "classroom", "stable", "orchard"]
_ADJECTIVES = ["old", "small", "large", "dark", "bright", "heavy", "light", "cold", "warm", "quiet", "noisy",
               "strange", "broken", "narrow", "wide", "dusty", "shiny", "wet", "dry", "tall", "short", "empty",
               "crowded", "green", "red", "blue", "grey", "white", "black", "golden", "silver", "wooden",
               "rusty", "soft", "rough", "ancient", "tiny", "enormous", "crooked", "tidy", "muddy", "pale"]
_MOODS = ["happy", "tired", "nervous", "angry", "curious", "worried", "cheerful", "sleepy", "proud",
          "frightened", "calm", "puzzled", "impatient", "gloomy", "hopeful", "lonely", "restless"]
_ADVERBS = ["slowly", "quickly", "quietly", "carefully", "suddenly", "softly", "loudly", "gently", "sharply",
            "nervously", "calmly", "eagerly", "happily", "sadly", "firmly", "briskly", "patiently"]
_TRANSITIVE = ["picked up", "opened", "closed", "carried", "dropped", "lifted", "found", "lost", "hid",
               "watched", "touched", "pushed", "pulled", "cleaned", "mended", "painted", "counted", "held",
               "kept", "left", "broke", "turned", "checked", "moved", "grabbed", "wrapped", "filled",
               "emptied", "shook", "studied", "polished", "borrowed", "buried", "sold", "fetched"]
_INTRANSITIVE = ["laughed", "sighed", "nodded", "shrugged", "smiled", "frowned", "waited", "listened",
                 "paused", "hesitated", "stumbled", "shivered", "yawned", "blinked", "grinned", "coughed",
                 "trembled", "hummed"]
_MOTION = ["walked", "ran", "hurried", "wandered", "crept", "marched", "drifted", "climbed", "raced",
           "strolled", "limped", "rode"]
_PREPOSITIONS = ["to", "toward", "across", "through", "along", "past", "into", "around"]
_BASE_VERBS = ["find", "open", "bring", "carry", "hide", "take", "fix", "keep", "sell", "follow", "burn",
               "read", "lose", "mend", "clean", "borrow", "bury", "fetch", "paint", "count"]
_ANIMALS = ["cat", "dog", "owl", "horse", "crow", "fox", "rabbit", "goat", "mouse", "toad", "sheep", "hen",
            "pony", "badger"]
_FOODS = ["bread", "cheese", "soup", "apples", "tea", "cake", "pie", "porridge", "milk", "honey", "eggs",
          "potatoes", "onions", "jam", "toast"]
_BODY = ["hands", "head", "shoulders", "eyes", "face", "arms", "knees", "feet", "back", "legs"]
_SOUNDS = ["a knock", "a shout", "a crash", "footsteps", "a whistle", "a bang", "laughter", "music",
           "a scream", "a bark", "a thud", "a creak", "singing", "a splash"]
_TIMES = ["morning", "evening", "night", "afternoon", "dawn", "midnight", "noon", "dusk", "supper",
          "breakfast", "lunch"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "last winter",
         "the storm", "the fair", "the wedding", "the funeral"]
_WEATHER = ["rain fell steadily on the {room}", "the wind howled across the {room}",
            "fog crept over the {room}", "snow settled on the {room}", "the sun warmed the {room}",
            "thunder rolled somewhere beyond the {room}", "frost glittered on the {room}",
            "clouds hung low over the {room}"]
_WEATHER_ADJ = ["cold", "dark", "wet", "late", "windy", "foggy", "early", "dangerous"]
_EXCLAIMS = ["Look", "Listen", "Wait", "Quick", "Hurry", "Come on", "Oh dear", "Well", "Honestly",
             "Good heavens", "Careful", "Stop"]
_SPEECH = ["said", "whispered", "shouted", "muttered", "replied", "called", "snapped", "added", "cried",
           "answered", "murmured"]
_ANSWERS = ["No", "Yes", "Not yet", "I’m not sure", "Of course", "Never", "Perhaps", "Only once"]
_NUMBERS = ["two", "three", "four", "five", "six", "seven", "nine", "twelve"]
_PLACE_KINDS = ["the village of {P}", "{P} Hall", "the town of {P}", "{P} Farm", "the {P} woods",
                "{P} Street"]

# Dialogue lines; slots as in the narration templates.
_LINES = [
    "We have to find the {obj} before {time}.",
    "I left the {obj} in the {room}.",
    "Did you see the {adj} {animal} near the {room}?",
    "Nobody must know about the {obj}.",
    "I don’t like this {room} at all.",
    "It’s too {wadj} to go out now.",
    "Bring me the {obj} from {place}, and be quick.",
    "{C3} will be waiting by the {room}.",
    "Why did you {vb} the {obj}?",
    "I think the {adj} {obj} belongs to {C3}.",
    "Where is my {obj}?",
    "Have you ever been to {place}?",
    "There is {food} in the {room} if you are hungry.",
    "You promised to {vb} the {obj} for me.",
    "The {animal} ran off with my {obj} again.",
    "We should leave before {time}.",
    "I heard {sound} from the {room} last night.",
    "Don’t tell {C3} about the {room}.",
    "My {body} hurt after that walk.",
    "Somebody has been in the {room}.",
]

# Narration and description; {C} and {C2} are characters, {he}/{his} the pronouns of {C}.
_NARRATION = [
    "{C} {vt} the {adj} {obj} and {vi} {adv}.",
    "{C} {vm} {prep} the {room} with the {obj} under {his} arm.",
    "The {room} was {adj} and {adj2}, and it smelled of {food}.",
    "Outside, {weather}.",
    "{C} had never seen such a {adj} {obj} before.",
    "By {time}, {C} and {C2} had reached the {room} at {place}.",
    "There was {sound} from the {room}, and {C} looked up {adv}.",
    "{C} felt {mood}; {he} had not slept since {day}.",
    "A {adj} {animal} sat on the {obj}, watching {C} with {adj2} eyes.",
    "{C2} set the {obj} on the table and served the {food} on a {adj} plate.",
    "Nobody at {place} knew where the {adj} {obj} had come from.",
    "{C} thought about the {obj} that {C2} had {vt} in the {room}.",
    "{C}’s {body} ached after the long walk from {place}.",
    "{C} {vt} the {obj}, then {vt2} the {obj2}.",
    "It was nearly {time} when {C2} came back from the {room}.",
    "The house at {place} had {num} {adj} windows and a {adj2} {obj} by the door.",
    "{C} {vm} {prep} the {room} {adv}, not daring to look back.",
    "Every {time}, {C2} fed the {animal} some {food} behind the {room}.",
    "{C} and {C2} {vi} at the same moment.",
    "In the {room}, a {adj} {obj} lay next to a {adj2} {obj2}.",
    "{C} {vi} and said nothing for a while.",
    "Somewhere near {place}, {C2} heard {sound} and a {animal} ran off.",
    "{C2} looked {mood}, and {C} pretended not to notice.",
    "The {obj} was {adj}, {adj2} and far too heavy for {C}.",
]


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[AEIOUaeiou])")


class _Story:
    """Fills templates with the cast and random word choices of one book."""

    def __init__(self, seed: int):
        # Names come from a generator seeded like the other minis; word choices from their own stream.
        words = MadeUpWords(random.Random(seed))
        self.rng = random.Random(f"book-mini-{seed}")
        self.cast = [(words.word(2), self.rng.choice([("he", "his"), ("she", "her")]))
                     for _ in range(NUM_CHARACTERS)]
        self.places = [self.rng.choice(_PLACE_KINDS).format(P=words.word()) for _ in range(NUM_PLACES)]

    def _slots(self) -> dict[str, str]:
        r = self.rng
        (c, (he, his)), (c2, _), (c3, _) = r.sample(self.cast, 3)
        adj, adj2 = r.sample(_ADJECTIVES, 2)
        obj, obj2 = r.sample(_OBJECTS, 2)
        vt, vt2 = r.sample(_TRANSITIVE, 2)
        return {
            "C": c, "C2": c2, "C3": c3, "he": he, "his": his,
            "adj": adj, "adj2": adj2, "obj": obj, "obj2": obj2, "vt": vt, "vt2": vt2,
            "vi": r.choice(_INTRANSITIVE), "vm": r.choice(_MOTION), "prep": r.choice(_PREPOSITIONS),
            "vb": r.choice(_BASE_VERBS), "adv": r.choice(_ADVERBS), "mood": r.choice(_MOODS),
            "room": r.choice(_ROOMS), "place": r.choice(self.places), "time": r.choice(_TIMES),
            "day": r.choice(_DAYS), "animal": r.choice(_ANIMALS), "food": r.choice(_FOODS),
            "body": r.choice(_BODY), "sound": r.choice(_SOUNDS), "num": r.choice(_NUMBERS),
            "wadj": r.choice(_WEATHER_ADJ), "weather": r.choice(_WEATHER).format(room=r.choice(_ROOMS)),
        }

    def _fill(self, template: str, slots: dict[str, str]) -> str:
        # "a" becomes "an" before a vowel only once the slots are filled in.
        text = _A_BEFORE_VOWEL.sub(r"\1n ", template.format(**slots))
        return text[0].upper() + text[1:]

    def narration(self) -> list[str]:
        """A paragraph of 3-5 narration sentences."""
        return [self._fill(self.rng.choice(_NARRATION), self._slots()) for _ in range(self.rng.randint(3, 5))]

    def dialogue(self) -> str:
        """A paragraph of speech: one character speaks, in one of a few layouts."""
        r = self.rng
        s = self._slots()
        line = self._fill(r.choice(_LINES), s)
        # A statement followed by its speaker ends in a comma inside the quotes; questions keep "?".
        lead = line[:-1] + "," if line.endswith(".") else line
        layout = r.randrange(5)
        if layout == 0:
            return f"“{lead}” {s['C']} {r.choice(_SPEECH)}."
        if layout == 1:
            exclaim = r.choice(_EXCLAIMS)
            return f"“{exclaim}, {s['C2']},” {s['C']} {r.choice(_SPEECH)} {s['adv']}. “{line}”"
        if layout == 2:
            return f"{s['C']} {s['vi']}. “{line}”"
        if layout == 3:
            return f"“{r.choice(_ANSWERS)},” {s['C']} {r.choice(_SPEECH)}. “{line}”"
        return f"“{lead}” {s['C']} {r.choice(_SPEECH)}, and {s['he']} {s['vi']} {s['adv']}."


def _count(text: str) -> int:
    # Count in the units the copyright task chunks by (punctuation counts as a word).
    return len(split_words(text))


def generate_book(num_words: int, seed: int) -> str:
    """A made-up story of about ``num_words`` words (punctuation counted as words), fixed by ``seed``.

    Paragraphs are separated by blank lines; a "Chapter N" heading starts every dozen paragraphs.
    Text is added a sentence (or a line of dialogue) at a time until ``num_words`` is reached, so
    the length overshoots by less than one sentence (about 30 words at most).
    """
    if num_words < 1:
        raise ValueError(f"num_words must be at least 1, got {num_words}")
    story = _Story(seed)
    paragraphs: list[str] = []
    total = 0
    chapter = 0
    while total < num_words:
        if len(paragraphs) % 13 == 0:
            chapter += 1
            sentences = [f"Chapter {chapter}"]
        elif story.rng.random() < 0.4:
            sentences = [story.dialogue()]
        else:
            sentences = story.narration()
        kept = []
        for sentence in sentences:
            if total >= num_words:
                break
            kept.append(sentence)
            total += _count(sentence)
        paragraphs.append(" ".join(kept))
    return "\n\n".join(paragraphs) + "\n"


def generate_book_files(root: Path, book_words: int, heldout_words: int, seed: int) -> tuple[Path, Path]:
    """Write ``book.txt`` (seed ``seed``) and ``heldout.txt`` (another seed) under ``root``.

    The held-out book is the same kind of story with other names and events, for perplexity
    and retain text. Returns (book path, held-out path).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    book, heldout = root / "book.txt", root / "heldout.txt"
    book.write_text(generate_book(book_words, seed), encoding="utf-8")
    # A seed far from the book's, so that nearby user seeds do not reproduce the held-out text.
    heldout.write_text(generate_book(heldout_words, seed + 1_000_003), encoding="utf-8")
    return book, heldout


def write_zero_shot_items(text: str, path: Path, num_items: int, seed: int) -> None:
    """ARC-format cloze items from ``text``: a sentence's first half as the question, its second half
    among three other sentences' second halves as the choices (``arc_easy``'s schema)."""
    rng = random.Random(seed)
    sentences = [s.split() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s.split()) >= 8]
    if len(sentences) < 4:
        raise ValueError("zero-shot stand-in: the text has fewer than 4 sentences of 8 words or more")
    picked = rng.sample(range(len(sentences)), min(num_items, len(sentences)))
    with Path(path).open("w") as f:
        for n, i in enumerate(picked):
            half = len(sentences[i]) // 2
            endings = [" ".join(sentences[i][half:])]
            for j in rng.sample([j for j in range(len(sentences)) if j != i], 3):
                endings.append(" ".join(sentences[j][len(sentences[j]) // 2:]))
            order = list(range(4))
            rng.shuffle(order)
            row = {"id": f"mini-{n}", "question": " ".join(sentences[i][:half]),
                   "choices": {"text": [endings[o] for o in order], "label": list("ABCD")},
                   "answerKey": "ABCD"[order.index(0)]}
            f.write(json.dumps(row) + "\n")
