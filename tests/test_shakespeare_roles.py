from pathlib import Path

import pytest

from textdata import shakespeare
from textdata.corpus import split_records, shakespeare_corpus
from runconfig.schema import DataConfig
import random

MINI_PLAY = """THE MINI PLAY

PERSONS REPRESENTED.

Hamlet, a prince.
A Priest.

ACT I.

Scene I. A platform.

[Enter Hamlet and Horatio.]

Ham.
Who's there?
Stand and unfold.

Hor.
Friends to this ground.

[Exit Horatio.]

O that this too too solid flesh
would melt.

First Clown.
[Aside.] A grave, a grave!

Ham.
Alas, poor Yorick.
"""


def test_parse_play_roles_and_stage_directions(tmp_path: Path):
    path = tmp_path / "mini_gut.txt"
    path.write_text(MINI_PLAY)
    roles = {r.name: r for r in shakespeare.parse_play(path)}
    assert set(roles) == {"HAM", "HOR", "FIRST CLOWN"}  # cast list before ACT is skipped
    assert roles["HAM"].speeches == ["Who's there?\nStand and unfold.", "Alas, poor Yorick."]
    # After a stage direction, the same speaker goes on (the same speech).
    assert roles["HOR"].speeches == ["Friends to this ground.\nO that this too too solid flesh\nwould melt."]
    assert roles["FIRST CLOWN"].speeches == ["A grave, a grave!"]  # inline [Aside.] removed
    assert roles["HAM"].key == "mini_gut/HAM"
    assert roles["HOR"].num_lines == 3


def test_real_package_one_edition_per_play():
    texts = shakespeare.available_texts("modern")
    assert not any(name.endswith("_gut_f") for name in texts)
    assert "hamlet_gut" in texts and len(texts) >= 40
    hamlet = {r.name: r for r in shakespeare.parse_play(texts["hamlet_gut"])}
    assert hamlet["HAM"].num_lines > 1000
    assert "HOR" in hamlet and "KING" in hamlet


def testsplit_records_is_disjoint_and_complete():
    speeches = [f"line {i}" for i in range(20)]
    train, test = split_records(speeches, 0.2, random.Random(0))
    train_set, test_set = set(train.split("\n\n")), set(test.split("\n\n"))
    assert not train_set & test_set
    assert train_set | test_set == set(speeches)
    assert len(test_set) == 4


def test_corpus_holds_out_public_and_test_plays():
    cfg = DataConfig(public_texts=["sonnets_gut", "hamlet_gut"], test_plays=["macbeth_gut"], min_lines=8)
    raw = shakespeare_corpus(cfg, seed=0)
    plays = {c.key.split("/")[0] for c in raw.clients}
    assert "hamlet_gut" not in plays and "macbeth_gut" not in plays
    assert len(raw.clients) > 500  # LEAF-scale: hundreds of natural clients
    assert "Yorick" not in "".join(c.train + c.test for c in raw.clients if "HAM" in c.key)
    assert "Macbeth" in raw.global_test or "MACBETH" in raw.global_test or "Duncan" in raw.global_test


def test_unknown_text_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown text"):
        shakespeare_corpus(DataConfig(public_texts=["no_such_play"]), seed=0)
