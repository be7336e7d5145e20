"""The Hugging Face path (flwr-datasets partitioners), tested offline on a local JSON file."""

import json

import pytest

from runconfig.load import compose
from textdata.corpus import build_or_load_corpus
from textdata.hub import hub_corpus


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "train.jsonl"
    rows = [
        {"text": f"Sample {i} from author {i % 12}: the quick brown fox jumps over the lazy dog.", "author": f"a{i % 12}",
         "label": i % 3}
        for i in range(240)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def settings(jsonl, *overrides):
    return compose(["+fleet=8dev_test", "data=hf", "data.name=json", f"data.data_files={jsonl}", *overrides])


@pytest.mark.parametrize(
    "overrides, clients",
    [
        (["data.partitioner=iid", "data.num_partitions=12"], 9),
        (["data.partitioner=dirichlet", "data.partition_by=label", "data.num_partitions=12"], 9),
        (["data.partitioner=natural_id", "data.partition_by=author"], 9),  # 12 authors
    ],
)
def test_partitioners(jsonl, overrides, clients):
    s = settings(jsonl, *overrides)
    raw = hub_corpus(s.data, seed=0)
    assert len(raw.clients) == clients  # minus 2 public partitions and 1 global-test partition
    assert raw.public and raw.global_test
    all_client_text = "\n".join(c.train + "\n" + c.test for c in raw.clients)
    for line in raw.global_test.split("\n\n"):
        assert line not in all_client_text  # the global test partition is held out from every client
    assert all(c.train and c.test for c in raw.clients)


def test_tokenized_corpus_from_hub_path(jsonl, tmp_path):
    s = settings(jsonl, "data.num_partitions=12", "data.vocab_size=300")
    corpus = build_or_load_corpus(s.data, 0, tmp_path)
    assert corpus.num_clients == 9 and len(corpus.public_ids) > 0 and len(corpus.client_train_ids(0)) > 0


def test_bad_partitioner_config(jsonl):
    with pytest.raises(ValueError, match="partition_by"):
        hub_corpus(settings(jsonl, "data.partitioner=dirichlet").data, seed=0)
    with pytest.raises(ValueError, match="num_partitions"):
        hub_corpus(settings(jsonl, "data.num_partitions=3").data, seed=0)
