"""Refusals written for soul: the targets of PO and the preferred answers of DPO.

Each forget example gets one refusal, fixed by its index and the seed, as SOUL fixes them at
preprocessing time.
"""

from __future__ import annotations

import random

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I don't have any information about that.",
    "That is not something I know about.",
    "I'm afraid I can't answer that question.",
    "I have no knowledge of that.",
    "Sorry, I'm not able to provide details on that.",
    "I can't say anything about that topic.",
    "That falls outside what I can tell you.",
    "I'm not aware of any details on that.",
    "Unfortunately, I can't share information about that.",
    "I would rather not answer that.",
    "I don't know the answer to that.",
    "That's beyond what I can speak to.",
    "I have nothing to share on that subject.",
    "I'm unable to answer questions about that.",
    "I can't recall anything about that.",
    "I'm not the right source for that question.",
    "That isn't something I can discuss.",
    "I'm sorry, that information isn't available to me.",
    "I don't have an answer for you on that.",
    "I can't confirm anything about that.",
    "That question is one I can't answer.",
    "My knowledge doesn't cover that.",
    "I'd prefer not to comment on that.",
    "I can't provide an answer here.",
    "I really couldn't tell you.",
    "No details about that are known to me.",
    "I'm not in a position to answer that.",
    "I can't help you with that particular question.",
    "I have no record of that.",
    "That's not a question I'm able to answer.",
    "I'm sorry, I don't know anything about that.",
    "I must decline to answer that.",
    "There is nothing I can tell you about that.",
)


def refusal_for(index: int, seed: int = 0) -> str:
    """The refusal assigned to forget example ``index`` (deterministic in ``seed``)."""
    return REFUSALS[random.Random(seed * 7919 + index).randrange(len(REFUSALS))]
