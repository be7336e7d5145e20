"""The federated corpus: a tokenizer, a public split, a global test set and one token stream per client.

Built once per data configuration and cached on disk (``corpus.pt`` + ``tokenizer.json``), so Ray workers and
real devices load token ids instead of re-parsing text. Shakespeare is the offline default; a Hugging Face
dataset partitioned with flwr-datasets is the path for users with a network (``textdata.hub``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock

from runconfig.schema import DataConfig
from textdata import shakespeare
from textdata.raw import ClientText, RawCorpus, split_records
from textdata.tokenizer import load_tokenizer, train_tokenizer


class Corpus:
    """Token ids of every split, addressable by client index."""

    def __init__(self, payload: dict, tokenizer):
        self.tokenizer = tokenizer
        self.client_keys: list[str] = payload["client_keys"]
        self._train = payload["train"]
        self._test = payload["test"]
        self.public_ids: torch.Tensor = payload["public"]
        self.global_test_ids: torch.Tensor = payload["global_test"]

    @property
    def num_clients(self) -> int:
        return len(self.client_keys)

    def client_train_ids(self, index: int) -> torch.Tensor:
        return self._train[index]

    def client_test_ids(self, index: int) -> torch.Tensor:
        return self._test[index]


def shakespeare_corpus(cfg: DataConfig, seed: int) -> RawCorpus:
    texts = shakespeare.available_texts(cfg.edition)
    plays = [n for n in texts if n not in shakespeare.POEMS]
    unknown = [n for n in (*cfg.public_texts, *cfg.test_plays) if n not in texts]
    if unknown:
        raise ValueError(
            f"data: unknown text(s) {unknown}; known: {', '.join(sorted(texts))}"
        )
    public = "\n\n".join(shakespeare.read_text(n, cfg.edition) for n in cfg.public_texts)
    test_parts = []
    for name in cfg.test_plays:
        test_parts.extend("\n\n".join(r.speeches) for r in shakespeare.parse_play(texts[name]))
    rng = random.Random(seed)
    clients = []
    for name in plays:
        if name in cfg.public_texts or name in cfg.test_plays:
            continue
        for role in shakespeare.parse_play(texts[name]):
            if role.num_lines < cfg.min_lines:
                continue
            train, test = split_records(role.speeches, cfg.test_fraction, rng)
            clients.append(ClientText(role.key, train, test))
    return RawCorpus(public=public, global_test="\n\n".join(test_parts), clients=clients)


def raw_corpus(cfg: DataConfig, seed: int) -> RawCorpus:
    if cfg.name == "shakespeare":
        return shakespeare_corpus(cfg, seed)
    from textdata.hub import hub_corpus  # imported lazily: pulls in `datasets`

    return hub_corpus(cfg, seed)


def corpus_fingerprint(cfg: DataConfig, seed: int, tokenizer_source: str) -> str:
    blob = json.dumps({"data": asdict(cfg), "seed": seed, "tok": tokenizer_source}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encode(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    return torch.tensor(ids, dtype=torch.int32)


def build_or_load_corpus(
    cfg: DataConfig, seed: int, cache_dir: Path, pretrained_tokenizer=None, tokenizer_source: str = "trained"
) -> Corpus:
    """Load the cached corpus for this configuration, building it first if needed (safe across processes).

    ``pretrained_tokenizer``: a checkpoint's own tokenizer; when None, a BPE tokenizer is trained on the
    public split.
    """
    folder = Path(cache_dir) / "corpus" / corpus_fingerprint(cfg, seed, tokenizer_source)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if not (folder / "corpus.pt").exists():
            raw = raw_corpus(cfg, seed)
            if not raw.clients:
                raise ValueError("data: no client has enough text; lower data.min_lines")
            if pretrained_tokenizer is None:
                tokenizer = train_tokenizer([raw.public], cfg.vocab_size)
                tokenizer.save_pretrained(str(folder / "tokenizer"))
            else:
                tokenizer = pretrained_tokenizer
            payload = {
                "client_keys": [c.key for c in raw.clients],
                "train": [_encode(tokenizer, c.train) for c in raw.clients],
                "test": [_encode(tokenizer, c.test) for c in raw.clients],
                "public": _encode(tokenizer, raw.public),
                "global_test": _encode(tokenizer, raw.global_test),
            }
            tmp = folder / "corpus.pt.tmp"
            torch.save(payload, tmp)
            tmp.replace(folder / "corpus.pt")
    payload = torch.load(folder / "corpus.pt", weights_only=True)
    tokenizer = pretrained_tokenizer if pretrained_tokenizer is not None else load_tokenizer(folder / "tokenizer")
    return Corpus(payload, tokenizer)


def windows(ids: torch.Tensor, seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into non-overlapping windows; the last partial one is padded (labels -100)."""
    ids = ids.long()
    n = max(1, -(-len(ids) // seq_len))
    inputs = torch.full((n * seq_len,), pad_id, dtype=torch.long)
    labels = torch.full((n * seq_len,), -100, dtype=torch.long)
    inputs[: len(ids)] = ids
    labels[: len(ids)] = ids
    return inputs.view(n, seq_len), labels.view(n, seq_len)


def assign_clients(num_devices: int, num_clients: int, seed: int, per_device: int | None = None) -> list[list[int]]:
    """The natural clients (roles) each device holds: a seeded draw without replacement.

    ``per_device=None`` deals every client out, round-robin over a seeded shuffle (devices hold
    ``num_clients // num_devices`` or one more); an integer gives each device exactly that many.
    """
    need = num_devices * (per_device or 1)
    if need > num_clients:
        raise ValueError(
            f"the fleet needs {need} natural clients ({num_devices} devices x {per_device or 1}) but the data has "
            f"only {num_clients}; fix: lower data.min_lines or data.roles_per_device, hold out fewer plays "
            "(data.public_texts, data.test_plays) or use a smaller fleet"
        )
    order = list(range(num_clients))
    random.Random(seed).shuffle(order)
    if per_device is not None:
        return [order[i * per_device : (i + 1) * per_device] for i in range(num_devices)]
    return [order[i::num_devices] for i in range(num_devices)]
