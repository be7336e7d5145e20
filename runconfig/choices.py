"""The allowed values of every setting that has a fixed set of them, listed once (runconfig/schema.py types its
fields with these enums).

OmegaConf refuses any other value naming the key (``config key 'aggregation.rule': Invalid value 'median',
expected one of [mean, krum, multikrum, trimmed_mean]``). They are :class:`enum.StrEnum`: a member *is* its
string (``AggregationRule.mean == "mean"``; JSON, pickles of plain settings, Flower's ConfigRecord and MLflow see
``mean``), so code may compare settings with plain strings. Member names equal their values: OmegaConf looks a
string up by name. A leaf module: imports nothing of the project.
"""

from __future__ import annotations

from enum import StrEnum


class TrainerName(StrEnum):
    """Local trainers (client/trainers registry; tests/test_structure.py checks they agree)."""

    lora_backprop = "lora_backprop"
    lora_dpsgd = "lora_dpsgd"  # record-level DP-SGD (privacy.record.enabled)
    zeroqat = "zeroqat"  # forward-only (SPSA)
    fedspine_prune = "fedspine_prune"  # FedSpine's pruned sub-model


FORWARD_ONLY_TRAINERS = (TrainerName.zeroqat,)


class MethodName(StrEnum):
    """Methods (conf/method/; the strategies registry; tests/test_structure.py checks they agree)."""

    fedavg_lora = "fedavg_lora"
    dp_lora = "dp_lora"
    dp_dylora = "dp_dylora"
    fedspine = "fedspine"
    fedspine_random = "fedspine_random"
    fedspine_fixed = "fedspine_fixed"
    hetlora = "hetlora"
    combined = "combined"


FEDSPINE_METHODS = (MethodName.fedspine, MethodName.fedspine_random, MethodName.fedspine_fixed, MethodName.hetlora,
                    MethodName.combined)


class Arch(StrEnum):
    llama = "llama"
    qwen2 = "qwen2"
    mistral = "mistral"


class Partitioner(StrEnum):
    iid = "iid"
    dirichlet = "dirichlet"
    natural_id = "natural_id"


class LoraRescale(StrEnum):
    standard = "standard"  # alpha / r
    dylora = "dylora"  # (alpha / rank) * sqrt(rank / r)


class FedSpinePolicy(StrEnum):
    bandit = "bandit"
    random = "random"
    fixed = "fixed"
    class_ranks = "class_ranks"


class HeadRule(StrEnum):
    within_groups = "within_groups"
    whole_groups = "whole_groups"


class MaskSource(StrEnum):
    auto = "auto"
    local = "local"
    public = "public"


class TimeReference(StrEnum):
    median = "median"
    max = "max"


class RankDistribution(StrEnum):
    uniform = "uniform"
    fixed = "fixed"


class ShortRound(StrEnum):
    retry = "retry"
    skip = "skip"


class ComputeDevice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Backend(StrEnum):
    ray = "ray"  # Flower's simulation engine
    inprocess = "inprocess"  # the ClientApp handlers in the server's process (simulations/inprocess.py)


class AggregationRule(StrEnum):
    mean = "mean"
    krum = "krum"
    multikrum = "multikrum"
    trimmed_mean = "trimmed_mean"


class PrivacyMode(StrEnum):
    none = "none"
    user = "user"


class Accountant(StrEnum):
    rdp = "rdp"
    prv = "prv"


class Sampling(StrEnum):
    poisson = "poisson"
    fixed = "fixed"


class NoisePlacement(StrEnum):
    server = "server"
    client = "client"


class NoiseRng(StrEnum):
    seeded = "seeded"
    secure = "secure"


class ZeroQATTrainable(StrEnum):
    lora = "lora"
    qv = "qv"
    qparams = "qparams"


class LrSchedule(StrEnum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class Clock(StrEnum):
    analytic = "analytic"  # priced FLOPs and bytes
    host_scaled = "host_scaled"  # host-measured compute scaled to the device
    measured = "measured"  # a real device's own clock
