"""Honest and hostile replies for one round of a real FleetFedAvg strategy (tests/test_robustness.py and
benchmarks/robustness.py share them).

A :class:`Round` opens a training round on a real strategy (cohort, work, global adapter), builds replies as
a device would send them (``Update.to_content`` in a Flower Message), and runs the strategy's own
``aggregate_train`` on them. Mutations turn an honest reply into a malformed or hostile one; each is a way a
broken or malicious device can answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MessageType, RecordDict

from fleet.arch import ArchShape
from fleet.devices import build_fleet
from protocol.messages import Update
from runconfig.load import compose
from strategies.fleet_fedavg import FleetFedAvg, RoundLedger
from zeroqat import upload
from zeroqat.spsa import step_seeds

TOY = ArchShape("toy", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                head_dim=16, vocab_size=64)  # the priced shape (pricing only reads it)
WINDOWS = 100  # training windows every device holds (its honest num-examples, the weight cap)
ROUND, VERSION = 3, 2


def node(device: int) -> int:
    return 1000 + device


@functools.lru_cache(maxsize=8)
def settings_for(overrides: tuple[str, ...] = ()):
    return compose(["+fleet=80dev", "client.local_steps=4", *overrides])


def global_adapter(seed: int = 0) -> dict[str, np.ndarray]:
    """A LoRA-shaped global adapter: A random (as PEFT initialises it), B trained a little."""
    rng = np.random.default_rng(seed)
    return {"l0.q.lora_A": rng.uniform(-0.2, 0.2, (4, 32)).astype(np.float32),
            "l0.q.lora_B": rng.normal(0, 0.01, (32, 4)).astype(np.float32),
            "l0.v.lora_A": rng.uniform(-0.2, 0.2, (4, 32)).astype(np.float32),
            "l0.v.lora_B": np.zeros((32, 4), np.float32)}


@dataclass
class Round:
    strategy: FleetFedAvg
    cohort: list[int]

    @classmethod
    def open(cls, cohort: list[int], overrides: tuple[str, ...] = (), strategy: FleetFedAvg | None = None,
             trainer: str | None = None) -> Round:
        settings = settings_for(tuple(overrides))
        if strategy is None:
            strategy = FleetFedAvg(settings, build_fleet(settings.fleet, settings.seed), TOY, 1)
            strategy.known_examples = {d.index: WINDOWS for d in strategy.devices}
            strategy.counters.model_version = VERSION
            strategy._global = global_adapter()
        ledger = RoundLedger()
        for i in cohort:
            device = strategy.devices[i]
            strategy.node_of_device[i] = node(i)
            ledger.sent[node(i)] = device
            work = strategy.work_for(device, ROUND)
            if trainer:
                work.trainer = trainer
            work.model_version = strategy.counters.model_version
            ledger.work[i] = work
        strategy._ledger = ledger
        return cls(strategy, list(cohort))

    def honest_update(self, device: int, scale: float = 0.5, seed: int = 0) -> Update:
        """What a device that trained normally sends: a delta of norm ``scale`` x the global adapter's."""
        rng = np.random.default_rng((seed, device))
        g = self.strategy._global
        raw = {k: rng.standard_normal(v.shape) for k, v in g.items()}
        norm = np.sqrt(sum(float(np.sum(v * v)) for v in raw.values()))
        gnorm = np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in g.values()))
        delta = {k: (v * scale * gnorm / norm).astype(np.float32) for k, v in raw.items()}
        loss = float(rng.uniform(2.0, 6.0))
        return Update(device_index=device, server_round=ROUND, delta=delta, num_examples=WINDOWS,
                      model_version=self.strategy.counters.model_version,
                      metrics={"compute_s": float(rng.uniform(0.1, 5)), "host_gflops": 50.0,
                               "train_loss": loss, "loss_start": loss + 0.2, "loss_end": loss - 0.2,
                               "handler_s": 1.0, "decode_s": 0.01, "peak_rss_mb": 900.0})

    def honest_seed_upload(self, device: int, seed: int = 0) -> Update:
        """A ZeroQAT device's seed-only reply: the seeds its work implies, finite projected gradients."""
        work = self.strategy._ledger.work[device]
        z = self.strategy.settings.zeroqat
        seeds = step_seeds(work.seed, work.local_steps, z.perturbations)
        grads = np.random.default_rng((seed, device)).normal(0, 1, seeds.shape).astype(np.float32)
        update = self.honest_update(device, seed=seed)
        update.delta = upload.encode(seeds, grads)
        return update

    @staticmethod
    def message(update: Update, device: int) -> Message:
        sent = Message(RecordDict(), dst_node_id=node(device), message_type=MessageType.TRAIN)
        return Message(update.to_content(), reply_to=sent)

    def aggregate(self, replies: list[Message]):
        """The strategy's own aggregation of these replies: (new global or None, metrics, accepted devices)."""
        arrays, metrics = self.strategy.aggregate_train(ROUND, replies)
        accepted = [u.device_index for u, _ in self.strategy._ledger.checked.accepted]
        return arrays, dict(metrics or {}), accepted


Mutation = Callable[[Update, Round], Update]


class RngDraw:
    """Choices from a numpy Generator (the benchmark); tests draw the same choices with hypothesis."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def real(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))


NUMERIC_DTYPES = ("float16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "bool", "complex64")
BAD_NUMBERS = (float("nan"), float("inf"), float("-inf"), -1.0)
SEED_UPLOAD_ON = ("zeroqat.seed_upload=true",)


def _tensor(update: Update, draw) -> str:
    return draw.pick(sorted(update.delta))


def m_nonfinite(u: Update, r: Round, draw) -> list[Update]:
    k = _tensor(u, draw)
    flat = u.delta[k].reshape(-1).copy()
    flat[draw.int(0, flat.size - 1)] = draw.pick((np.nan, np.inf, -np.inf))
    u.delta[k] = flat.reshape(u.delta[k].shape)
    return [u]


def m_extra_key(u: Update, r: Round, draw) -> list[Update]:
    name = draw.pick(("x", "l0.q.lora_C", "l1.q.lora_A", "zo.seeds", "")) + "#" * draw.int(0, 3)
    if name in u.delta:
        name += ".extra"
    u.delta[name] = np.zeros(draw.pick(((4, 32), (1,), (0,))), np.float32)
    return [u]


def m_missing_key(u: Update, r: Round, draw) -> list[Update]:
    u.delta.pop(_tensor(u, draw))
    return [u]


def m_renamed_key(u: Update, r: Round, draw) -> list[Update]:
    k = _tensor(u, draw)
    u.delta[k + draw.pick((".renamed", "_", " ", ".weight"))] = u.delta.pop(k)
    return [u]


def m_transposed(u: Update, r: Round, draw) -> list[Update]:
    k = _tensor(u, draw)
    u.delta[k] = np.ascontiguousarray(u.delta[k].T)
    return [u]


def m_broadcastable(u: Update, r: Round, draw) -> list[Update]:
    k = _tensor(u, draw)
    v = u.delta[k]
    shapes = [(1, *v.shape), (*v.shape, 1), (v.shape[0], 1), (1, v.shape[1]), (v.size,), (), (v.shape[0],)]
    shape = draw.pick(shapes)
    u.delta[k] = np.broadcast_to(v.reshape(-1)[: int(np.prod(shape))].reshape(shape) if shape else v.reshape(-1)[0],
                                 shape).copy() if int(np.prod(shape)) <= v.size else np.zeros(shape, np.float32)
    return [u]


def m_dtype(u: Update, r: Round, draw) -> list[Update]:
    dtype = draw.pick(NUMERIC_DTYPES)
    every = draw.pick((True, False))
    keys = sorted(u.delta) if every else [_tensor(u, draw)]
    for k in keys:
        u.delta[k] = u.delta[k].astype(dtype)
    return [u]


def m_weight(u: Update, r: Round, draw) -> list[Update]:
    u.num_examples = draw.pick((0, -1, -(2**62), WINDOWS + 1, 10**9, 2**62, 1e300, float("nan"), float("inf"),
                                float("-inf"), 0.5, -0.5))
    return [u]


def m_identity(u: Update, r: Round, draw) -> list[Update]:
    field = draw.pick(("round", "version", "device"))
    if field == "round":
        u.server_round = ROUND + draw.pick((-1, 1, -ROUND, 10**6))
    elif field == "version":
        u.model_version = VERSION + draw.pick((-1, 1, 1000))
    else:
        u.device_index = draw.pick([d for d in range(80) if d != u.device_index][:5] + [-1, 10**6])
    return [u]


def m_metrics(u: Update, r: Round, draw) -> list[Update]:
    key = draw.pick(("compute_s", "host_gflops", "train_loss", "stall_s", "decode_s", "handler_s"))
    value = draw.pick((*BAD_NUMBERS, None) + ((0.0,) if key == "host_gflops" else ()))
    if value is None:
        if key not in ("compute_s", "host_gflops", "train_loss"):
            value = float("inf")
        else:
            u.metrics.pop(key)
            return [u]
    u.metrics[key] = value
    return [u]


def m_diverged(u: Update, r: Round, draw) -> list[Update]:
    start = u.metrics["loss_start"]
    u.metrics["loss_end"] = draw.pick((start + draw.real(3.01, 1e6), float("nan"), float("inf")))
    return [u]


def m_norm(u: Update, r: Round, draw) -> list[Update]:
    factor = 10.0 ** draw.int(3, 12)
    u.delta = {k: (v * factor).astype(np.float32) for k, v in u.delta.items()}
    return [u]


def m_seed_upload(u: Update, r: Round, draw) -> list[Update]:
    """A seed upload that disagrees with the work (the device was asked for one)."""
    honest = r.honest_seed_upload(u.device_index)
    seeds, grads = honest.delta[upload.SEEDS].copy(), honest.delta[upload.GRADS].copy()
    kind = draw.pick(("count", "values", "negative", "shape", "grads_shape", "grads_nonfinite", "dtype", "million"))
    if kind == "count":
        steps, q = seeds.shape
        shape = draw.pick(((steps + draw.int(1, 50), q), (max(0, steps - 1), q), (steps, q + draw.int(1, 8)), (0, 0)))
        seeds = np.random.default_rng(0).integers(0, 2**31 - 1, shape, dtype=np.int64)
        grads = np.ones(shape, np.float32)
    elif kind == "values":
        seeds.reshape(-1)[draw.int(0, seeds.size - 1)] += draw.pick((1, -1, 2**40))
    elif kind == "negative":
        seeds.reshape(-1)[draw.int(0, seeds.size - 1)] = draw.pick((-1, np.iinfo(np.int64).min, -(2**31)))
    elif kind == "shape":
        seeds, grads = draw.pick(((seeds.reshape(-1), grads.reshape(-1)), (seeds[None], grads[None])))
    elif kind == "grads_shape":  # the IndexError of the issue: seeds and gradients of different shapes
        grads = draw.pick((grads[:-1], grads[:, :0], np.ones((seeds.shape[0] + 3, seeds.shape[1]), np.float32)))
    elif kind == "grads_nonfinite":
        grads.reshape(-1)[draw.int(0, grads.size - 1)] = draw.pick((np.nan, np.inf, -np.inf))
    elif kind == "dtype":
        seeds, grads = draw.pick(((seeds.astype(np.int32), grads), (seeds, grads.astype(np.float64)),
                                  (seeds.astype(np.float64), grads)))
    else:  # 10^6 directions: a 12 MB reply under the size limit
        seeds = np.random.default_rng(1).integers(0, 2**31 - 1, (1000, 1000), dtype=np.int64)
        grads = np.ones((1000, 1000), np.float32)
    honest.delta = {upload.SEEDS: seeds, upload.GRADS: grads}
    return [honest]


def m_unasked_seed_upload(u: Update, r: Round, draw) -> list[Update]:
    """An honest-looking seed upload from a device that was not asked for one (runs with seed_upload off)."""
    return [r.honest_seed_upload(u.device_index)]


def m_duplicate(u: Update, r: Round, draw) -> list[Update]:
    """The same device answers twice (honest, then again): only the first may count."""
    second = r.honest_update(u.device_index, scale=draw.real(0.1, 2.0), seed=1)
    return [u, second]


def m_broken_record(u: Update, r: Round, draw) -> list:
    """A message that is not an Update at all: records missing, of another kind, or unreadable fields."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    content = u.to_content()
    kind = draw.pick(("no_metrics", "no_arrays", "arrays_as_config", "no_device", "device_nan", "round_list",
                      "empty"))
    if kind == "no_metrics":
        del content["metrics"]
    elif kind == "no_arrays":
        del content["arrays"]
    elif kind == "arrays_as_config":
        content["arrays"] = ConfigRecord({"l0.q.lora_A": 1.0})
    elif kind == "empty":
        content = RecordDict({"arrays": ArrayRecord(), "metrics": MetricRecord({})})
    else:
        metrics = dict(content["metrics"])
        if kind == "no_device":
            metrics.pop("device-index")
        elif kind == "device_nan":
            metrics["device-index"] = float("nan")
        else:
            metrics["server-round"] = [float(ROUND)]
        content["metrics"] = MetricRecord(metrics)
    sent = Message(RecordDict(), dst_node_id=node(u.device_index), message_type=MessageType.TRAIN)
    return [Message(content, reply_to=sent)]


# name -> (mutation, the overrides of the round it runs in, the trainer the round's work names)
MUTATIONS: dict[str, tuple[Callable, tuple[str, ...], str | None]] = {
    "nonfinite": (m_nonfinite, (), None), "extra_key": (m_extra_key, (), None),
    "missing_key": (m_missing_key, (), None), "renamed_key": (m_renamed_key, (), None),
    "transposed": (m_transposed, (), None), "broadcastable": (m_broadcastable, (), None),
    "dtype": (m_dtype, (), None), "weight": (m_weight, (), None), "identity": (m_identity, (), None),
    "metrics": (m_metrics, (), None), "diverged": (m_diverged, (), None), "norm": (m_norm, (), None),
    "seed_upload": (m_seed_upload, SEED_UPLOAD_ON, "zeroqat"),
    "unasked_seed_upload": (m_unasked_seed_upload, (), None),
    "duplicate": (m_duplicate, (), None), "broken_record": (m_broken_record, (), None),
}


def malformed_round(name: str, draw, honest: int, target: int = 0):
    """A round of ``honest`` honest devices and one hostile ``target``: (round, messages, target's allowed
    acceptances) or None when the mutation cannot be put on the wire (e.g. a dtype Flower cannot carry)."""
    mutate, overrides, trainer = MUTATIONS[name]
    others = [d for d in range(1, 80)][: honest]
    r = Round.open([target, *others], overrides, trainer=trainer)
    updates = mutate(r.honest_update(target), r, draw)
    messages = []
    try:
        for u in updates:
            messages.append(u if isinstance(u, Message) else Round.message(u, target))
    except Exception:  # noqa: BLE001 - Flower refuses to carry it: not a reply a device can send
        return None
    messages += [Round.message(r.honest_update(d), d) for d in others]
    allowed = 1 if name == "duplicate" else 0
    return r, messages, allowed
