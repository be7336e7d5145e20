"""Text before tokenization: each client's train/test split, and the corpus they make.

Shared by the Shakespeare reader (textdata/corpus.py) and the Hugging Face one (textdata/hub.py); its own module
so that neither imports the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class ClientText:
    """One natural client (a speaking role, or a hub partition) with its own train/test split."""

    key: str
    train: str
    test: str


@dataclass
class RawCorpus:
    public: str
    global_test: str
    clients: list[ClientText]


def split_records(speeches: list[str], test_fraction: float, rng: random.Random) -> tuple[str, str]:
    """A seeded split of one client's records (speeches) into train and test text; test is never empty."""
    order = list(range(len(speeches)))
    rng.shuffle(order)
    n_test = max(1, round(len(speeches) * test_fraction)) if len(speeches) > 1 else 0
    test_idx = set(order[:n_test])
    train = [s for i, s in enumerate(speeches) if i not in test_idx]
    test = [s for i, s in enumerate(speeches) if i in test_idx] or train[-1:]
    return "\n\n".join(train), "\n\n".join(test)
