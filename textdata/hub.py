"""Hugging Face datasets partitioned with flwr-datasets, for users with a network (or a local file).

``data.name`` is what ``datasets.load_dataset`` takes (a hub id, or ``json``/``csv``/``text`` with
``data.data_files``). The ``train`` split is cut into ``data.num_partitions`` partitions by the configured
partitioner (IID, Dirichlet over ``data.partition_by`` labels, or one partition per natural id). The last
partition is the global test set, the ``data.public_partitions`` before it are the public split (tokenizer,
base model); every other partition is a natural client with its own train/test split.
"""

from __future__ import annotations

import random

from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner, Partitioner

from runconfig.schema import DataConfig
from textdata.raw import ClientText, RawCorpus, split_records


def make_partitioner(cfg: DataConfig, seed: int) -> Partitioner:
    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=cfg.num_partitions)
    if cfg.partitioner in ("dirichlet", "natural_id") and not cfg.partition_by:
        raise ValueError(f"data.partition_by: the {cfg.partitioner} partitioner needs a column name")
    if cfg.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=cfg.num_partitions,
            partition_by=cfg.partition_by,
            alpha=cfg.dirichlet_alpha,
            min_partition_size=0,
            self_balancing=True,
            seed=seed,
        )
    if cfg.partitioner == "natural_id":
        return NaturalIdPartitioner(partition_by=cfg.partition_by)
    raise ValueError(f"data.partitioner: unknown '{cfg.partitioner}'; known: iid, dirichlet, natural_id")


def hub_corpus(cfg: DataConfig, seed: int) -> RawCorpus:
    kwargs = {"data_files": cfg.data_files} if cfg.data_files else {}
    fds = FederatedDataset(
        dataset=cfg.name, partitioners={"train": make_partitioner(cfg, seed)}, seed=seed, **kwargs
    )
    partitioner = fds.partitioners["train"]
    fds.load_partition(0, "train")  # materialises the partitioner (natural ids know their count only now)
    count = partitioner.num_partitions
    if count < cfg.public_partitions + 2:
        raise ValueError(
            f"data: {count} partitions cannot hold a global test partition, {cfg.public_partitions} public "
            "ones and at least one client; fix: raise data.num_partitions or lower data.public_partitions"
        )

    def texts(index: int) -> list[str]:
        column = fds.load_partition(index, "train")[cfg.text_column]
        return [t for t in column if t]

    rng = random.Random(seed)
    public_ids = range(count - 1 - cfg.public_partitions, count - 1)
    clients = []
    for index in range(count - 1 - cfg.public_partitions):
        train, test = split_records(texts(index), cfg.test_fraction, rng)
        clients.append(ClientText(f"{cfg.name}/{index}", train, test))
    return RawCorpus(
        public="\n\n".join(t for i in public_ids for t in texts(i)),
        global_test="\n\n".join(texts(count - 1)),
        clients=clients,
    )
