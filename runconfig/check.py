"""The one check of a configuration, run before any work: :func:`validate`.

:func:`runconfig.load.to_settings` calls it on every composed config (the CLI's precheck, ``compose`` for
``flwr run``, tests and benchmarks), so every entry point refuses the same bad settings in the same one line
(``config key 'KEY': PROBLEM. Fix: FIX``; the CLI exits 2 and writes nothing). In order:

1. every choice is one of its enum's values (runconfig/schema.py; OmegaConf already refused others when the
   settings were merged, this covers settings built in Python);
2. each section's ranges and references (below);
3. the privacy settings against the fleet (privacy/plan.check_privacy): population, delta, sigma, epsilon;
4. the ``method x privacy x trainer x aggregation x simulation`` rules (runconfig/combinations.py);
Validation imports no torch (tests/test_structure.py). Calibrating a user-level DP run's sigma needs Opacus's
accountant (and so torch): that is the run's privacy plan, :func:`privacy.plan.resolve_plan`, built when the run
is set up (the CLI's precheck and ``FederatedRun.setup``, before any data or model work), where an unreachable
epsilon is refused in the same one-line form.

What needs the built base model (does the work fit the fleet's memory: server/preflight.check_fits) is checked
by ``server.preflight.prepare``, right after the checkpoint exists and before the first round.
Imports neither strategies nor trainers: their names are the schema's enums (tests check the registries agree).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from enum import Enum
from pathlib import Path

from privacy.plan import check_privacy
from runconfig.combinations import check_combinations
from runconfig.choices import FEDSPINE_METHODS, Clock, PrivacyMode, TrainerName
from runconfig.errors import ConfigError, refuse
from runconfig.errors import require as _require
from runconfig.schema import Settings


def check_choices(obj, prefix: str = "") -> None:
    """Every enum-typed field of the settings holds one of its enum's values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is typing.Union and len(args) == 1:  # Optional[X]
            kind = args[0]
        key = f"{prefix}{f.name}"
        if isinstance(kind, type) and issubclass(kind, Enum) and value is not None:
            if value not in set(kind):
                refuse(key, f"unknown '{value}'", f"one of {', '.join(kind)}")
        elif dataclasses.is_dataclass(value):
            check_choices(value, key + ".")
        elif isinstance(value, dict):
            for name, item in value.items():
                if dataclasses.is_dataclass(item):
                    check_choices(item, f"{key}.{name}.")


def validate(s: Settings) -> None:
    """Refuse settings that cannot run (see the module docstring); one ConfigError naming the key and the fix."""
    check_choices(s)
    f = s.fleet
    _require(f.size >= 1, "fleet.size", f"must be at least 1 (got {f.size})", "fleet.size=80")
    _require(bool(f.classes), "fleet.classes", "the fleet has no device classes", "use a fleet from conf/fleet/")
    total = sum(c.share for c in f.classes.values())
    _require(abs(total - 1.0) < 1e-6, "fleet.classes.*.share", f"shares sum to {total:g}, not 1", "fix the shares")
    for spread in ("link_spread", "compute_spread"):
        value = getattr(f, spread)
        _require(0 <= value <= 2, f"fleet.{spread}", f"must be in [0, 2] (a lognormal sigma), got {value}",
                 "e.g. 0.5 (most devices within x0.6-x1.6 of their class), 0 for identical devices")
    for name, c in f.classes.items():
        key = f"fleet.classes.{name}"
        _require(c.share >= 0, f"{key}.share", "must be >= 0", "a fraction of the fleet")
        for attr in ("peak_gflops", "memory_gb", "uplink_mbps", "downlink_mbps", "memory_bandwidth_gbps"):
            _require(getattr(c, attr) > 0, f"{key}.{attr}", "must be > 0", "take it from the spec sheet")
        _require(c.peak_int8_gops is None or c.peak_int8_gops > 0, f"{key}.peak_int8_gops", "must be > 0 or null",
                 "take it from the spec sheet, or null to use peak_gflops")
        _require(0 < c.memory_efficiency <= 1, f"{key}.memory_efficiency", "must be in (0, 1]", "e.g. 0.7")
        _require(0 <= c.operator_us < 1e5, f"{key}.operator_us",
                 f"must be in [0, 1e5) microseconds (got {c.operator_us})",
                 "e.g. 30 (docs/cost_model.md: per-step overhead)")
        for trainer, eff in c.efficiency.items():
            _require(0 < eff <= 1, f"{key}.efficiency.{trainer}", f"must be in (0, 1] (got {eff})", "e.g. 0.25")
        _require(0 < c.availability <= 1, f"{key}.availability", "must be in (0, 1]", "e.g. 0.9")
        _require(0 < c.usable_memory_fraction <= 1, f"{key}.usable_memory_fraction", "must be in (0, 1]", "e.g. 0.6")
        _require(0 <= c.failure_rate < 1, f"{key}.failure_rate", f"must be in [0, 1) (got {c.failure_rate})",
                 "e.g. 0.05 (a share of started rounds that never reply)")
    fed = s.federation
    _require(fed.cohort_size >= 1, "federation.cohort_size", "must be >= 1", "federation.cohort_size=16")
    _require(
        fed.cohort_size <= f.size,
        "federation.cohort_size",
        f"the cohort ({fed.cohort_size}) is larger than the fleet ({f.size} devices)",
        f"federation.cohort_size={f.size} or a larger fleet (fleet.size=...)",
    )
    _require(
        0 <= fed.eval_cohort_size <= f.size,
        "federation.eval_cohort_size",
        f"must be between 0 and the fleet size ({f.size})",
        f"federation.eval_cohort_size={min(16, f.size)}",
    )
    _require(s.rounds >= 1, "rounds", "must be >= 1", "rounds=8")
    _require(s.seed >= 0, "seed", "must be >= 0", "seed=0")
    _validate_rounds_and_faults(s)
    _validate_references(s)
    c = s.client
    _require(c.local_steps >= 1, "client.local_steps", "must be >= 1", "client.local_steps=12")
    _require(c.batch_size >= 1, "client.batch_size", "must be >= 1", "client.batch_size=8")
    _require(c.lr > 0, "client.lr", "must be > 0", "client.lr=2e-3")
    _require(s.method.lora.rank >= 1, "method.lora.rank", "must be >= 1", "method.lora.rank=8")
    _require(bool(s.method.lora.target_modules), "method.lora.target_modules", "is empty", "e.g. [q_proj, v_proj]")
    _validate_zeroqat(s)
    _require(s.data.seq_len >= 8, "data.seq_len", "must be >= 8", "data.seq_len=64")
    _require(0 < s.data.test_fraction < 1, "data.test_fraction", "must be in (0, 1)", "data.test_fraction=0.2")
    _require(s.method.fedspine is not None or s.method.name not in FEDSPINE_METHODS, "method.fedspine",
             f"method '{s.method.name}' needs it", "use a conf/method/ file of the FedSpine family (fedspine, hetlora, ...)")
    if s.method.fedspine is not None:
        _validate_fedspine(s)
    if s.method.dylora is not None:
        rank, d = s.method.lora.rank, s.method.dylora
        _require(1 <= d.min_rank <= rank, "method.dylora.min_rank", f"must be in [1, {rank}]", "method.dylora.min_rank=1")
        bad = [r for r in d.eval_ranks if not 1 <= r <= rank]
        _require(not bad, "method.dylora.eval_ranks", f"{bad} outside [1, {rank}]", "ranks up to method.lora.rank")
    if s.model.name_or_path is None:
        _require(s.model.hidden_size % s.model.num_heads == 0, "model.num_heads",
                 "must divide model.hidden_size", "e.g. 4 heads for hidden 256")
        _require(s.model.num_heads % s.model.num_kv_heads == 0, "model.num_kv_heads",
                 "must divide model.num_heads", "e.g. 2 kv heads for 4 heads")
        _require(s.data.seq_len <= s.model.max_position_embeddings, "data.seq_len",
                 "is longer than model.max_position_embeddings", "a shorter data.seq_len")
    _validate_cost(s)
    _validate_paths(s)
    # the privacy section needs the fleet and rounds checked first; its settings alone, then the cross-section
    # rules (sigma's calibration is the run's privacy plan: module docstring)
    if s.privacy.mode == PrivacyMode.user:
        check_privacy(s)
    check_combinations(s)  # method x privacy x trainer x aggregation x simulation (runconfig/combinations.py)


def _validate_simulation(s: Settings) -> None:
    sim = s.simulation
    _require(sim.backend == "ray" or not sim.ray_address, "simulation.ray_address",
             "is set, but simulation.backend=inprocess starts no Ray", "simulation.backend=ray, or drop ray_address")
    _require(sim.workers >= 1, "simulation.workers", f"must be >= 1 (got {sim.workers})", "e.g. 2 on a 2-core host")
    _require(sim.workers == 1 or sim.backend == "inprocess", "simulation.workers",
             "sets the in-process engine's worker processes (Ray sizes its own pool by num_cpus_per_client)",
             "simulation.backend=inprocess, or simulation.workers=1")
    if sim.cohort_batching:
        _require(sim.backend == "inprocess", "simulation.cohort_batching",
                 "needs simulation.backend=inprocess (Ray runs each device in its own call)",
                 "simulation.backend=inprocess simulation.cohort_batching=true")
        _require(s.cost.clock == "analytic", "simulation.cohort_batching",
                 f"batched devices share one measured compute time, which cost.clock={s.cost.clock} would read",
                 "cost.clock=analytic, or simulation.cohort_batching=false")
        _require(s.method.lora.dropout == 0, "simulation.cohort_batching",
                 "batched adapters apply no LoRA dropout",
                 "method.lora.dropout=0.0, or simulation.cohort_batching=false")
        _require(sim.max_batched_devices >= 2, "simulation.max_batched_devices", "must be >= 2", "e.g. 64")
    _require(not sim.compile or sim.cohort_batching, "simulation.compile",
             "compiles the batched models, which only simulation.cohort_batching=true builds",
             "simulation=fast simulation.compile=true")


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a Hub id (``org/name`` or ``name``)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def _validate_paths(s: Settings) -> None:
    """Local model folders and data files must exist (a Hub id is left to transformers / datasets)."""
    path = s.model.name_or_path
    if path is not None:
        folder = Path(path).expanduser()
        _require(bool(path.strip()), "model.name_or_path", "is empty", "a model folder or a Hub id (org/name)")
        if (_looks_local(path) or folder.exists()) and not (folder.is_file() and folder.suffix == ".gguf"):
            _require(folder.is_dir(), "model.name_or_path", f"no model folder at {path}",
                     "a folder written by transformers' save_pretrained (config.json, weights, tokenizer), or a "
                     "Hub id such as Qwen/Qwen2.5-0.5B")
            _require((folder / "config.json").is_file() or any(folder.glob("*.gguf")), "model.name_or_path",
                     f"{path} holds no config.json (nor a .gguf file)", "the folder save_pretrained wrote")
    files = s.data.data_files
    if s.data.name != "shakespeare" and files and not any(c in files for c in "*?[") and _looks_local(files):
        _require(Path(files).expanduser().exists(), "data.data_files", f"no such file: {files}",
                 "an existing local file (e.g. data.data_files=/path/train.jsonl)")


def _validate_cost(s: Settings) -> None:
    c = s.cost
    _require(c.wire_bytes in (1, 2, 4, 8), "cost.wire_bytes", f"must be 1, 2, 4 or 8 (got {c.wire_bytes})",
             "cost.wire_bytes=4 (float32 adapters)")
    if c.shape is not None:
        sh = c.shape
        for attr in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size"):
            _require(getattr(sh, attr) >= 1, f"cost.shape.{attr}", "must be >= 1", "copy it from the model's config.json")
        _require(sh.num_attention_heads % sh.num_key_value_heads == 0, "cost.shape.num_key_value_heads",
                 "must divide cost.shape.num_attention_heads", "copy both from the model's config.json")
        _require(sh.head_dim is not None or sh.hidden_size % sh.num_attention_heads == 0, "cost.shape.head_dim",
                 "is needed when num_attention_heads does not divide hidden_size", "cost.shape.head_dim=64")
    if c.clock in (Clock.analytic, Clock.host_scaled):  # both divide by the device's matmul rate per trainer
        trainers = sorted(TrainerName)
        for name, cls in s.fleet.classes.items():
            missing = [t for t in trainers if t not in cls.efficiency]
            _require(not missing, f"fleet.classes.{name}.efficiency", f"has no efficiency for {', '.join(missing)}",
                     "an achieved/peak matmul rate per trainer (conf/device/*.yaml has them with sources)")


def _validate_zeroqat(s: Settings) -> None:
    from quantization.spec import parse_wa

    z = s.zeroqat
    try:
        parse_wa(z.quant, z.group_size)
    except ValueError as err:
        raise ConfigError(f"config key 'zeroqat.quant': {err}. Fix: e.g. zeroqat.quant=W4A8") from None
    _require(z.eps > 0, "zeroqat.eps", "must be > 0", "zeroqat.eps=1e-2")
    _require(z.lr >= 0, "zeroqat.lr", "must be >= 0", "zeroqat.lr=1e-3")
    _require(z.perturbations >= 1, "zeroqat.perturbations", "must be >= 1", "zeroqat.perturbations=1")
    _require(0 <= z.smoothing_alpha <= 1, "zeroqat.smoothing_alpha", "must be in [0, 1]", "zeroqat.smoothing_alpha=0.5")
    uses_zeroqat = s.client.trainer == "zeroqat" or any(c.trainer == "zeroqat" for c in s.fleet.classes.values())
    _require(not uses_zeroqat or z.trainable == "lora", "zeroqat.trainable",
             f"'{z.trainable}' trains no adapter, so a fleet cannot aggregate it",
             "zeroqat.trainable=lora in a fleet (qv/qparams are for single-device fine-tuning)")


def _validate_fedspine(s: Settings) -> None:
    f, key = s.method.fedspine, "method.fedspine"
    _require(bool(f.ranks) and all(1 <= r <= s.method.lora.rank for r in f.ranks), f"{key}.ranks",
             f"every arm rank must be in 1..method.lora.rank ({s.method.lora.rank}), got {list(f.ranks)}",
             "lower the ranks or raise method.lora.rank (the global adapter's rank)")
    _require(0 <= f.max_ratio < 1, f"{key}.max_ratio", "must be in [0, 1)", "e.g. 0.6")
    _require(0 <= f.target_sparsity < 1, f"{key}.target_sparsity", "must be in [0, 1)", "e.g. 0.5")
    _require(f.prune_every >= 1, f"{key}.prune_every", "must be >= 1", "e.g. 20 (the paper), or local_steps/2")
    _require(0 < f.sparsity_step <= 1, f"{key}.sparsity_step", "must be in (0, 1]", "e.g. 0.1")
    _require(0 <= f.importance_ema < 1, f"{key}.importance_ema", "must be in [0, 1)", "e.g. 0.9")
    if f.policy == "fixed":
        _require(1 <= f.fixed_rank <= s.method.lora.rank, f"{key}.fixed_rank", "must be in 1..method.lora.rank",
                 "e.g. 8")
    if f.policy == "class_ranks":
        missing = sorted(set(s.fleet.classes) - set(f.class_ranks))
        _require(not missing, f"{key}.class_ranks", f"no rank for device classes {missing}",
                 "add a rank per class of the fleet")
        _require(all(1 <= r <= s.method.lora.rank for r in f.class_ranks.values()), f"{key}.class_ranks",
                 "ranks must be in 1..method.lora.rank", "lower them")
    _require(s.client.trainer is None, "client.trainer", "FedSpine methods run their own trainer (fedspine_prune)",
             "leave client.trainer unset")


def _validate_rounds_and_faults(s: Settings) -> None:
    """Deadlines, retries, validation bounds, robust aggregation, checkpoints, fault injection."""
    fed, size = s.federation, s.fleet.size
    _require(fed.round_timeout_s > 0, "federation.round_timeout_s", "must be > 0 (a round must end)", "e.g. 600")
    _require(fed.connect_timeout_s >= 0, "federation.connect_timeout_s", "must be >= 0", "e.g. 120")
    _require(fed.deadline_s is None or fed.deadline_s > 0, "federation.deadline_s", "must be > 0 or null",
             "federation.deadline_s=null (no deadline) or a number of simulated seconds")
    _require(fed.over_selection >= 0, "federation.over_selection", "must be >= 0", "e.g. 0.3 (ask 30% more devices)")
    asked = math.ceil(fed.cohort_size * (1 + fed.over_selection) - 1e-9)
    _require(asked <= size, "federation.over_selection",
             f"asks {asked} devices, more than the fleet's {size}", "a smaller over_selection or cohort_size")
    _require(1 <= fed.min_replies <= fed.cohort_size, "federation.min_replies",
             f"must be between 1 and federation.cohort_size ({fed.cohort_size}), got {fed.min_replies}",
             "federation.min_replies=1")
    _require(fed.max_retries >= 0, "federation.max_retries", "must be >= 0", "federation.max_retries=2")
    v = s.validation
    _require(v.max_update_norm is None or v.max_update_norm > 0, "validation.max_update_norm",
             "must be > 0 or null", "null (no absolute bound) or e.g. 50")
    _require(v.norm_outlier_factor is None or v.norm_outlier_factor > 1, "validation.norm_outlier_factor",
             "must be > 1 or null", "e.g. 100")
    _require(v.max_message_mb > 0, "validation.max_message_mb", "must be > 0", "e.g. 64")
    _require(v.norm_bound_factor is None or v.norm_bound_factor >= 1, "validation.norm_bound_factor",
             "must be >= 1 or null", "e.g. 100 (null: no default bound)")
    _require(v.max_loss_rise is None or v.max_loss_rise > 0, "validation.max_loss_rise", "must be > 0 or null",
             "e.g. 3.0 (nats)")
    _require(v.max_examples is None or v.max_examples >= 1, "validation.max_examples", "must be >= 1 or null",
             "null (the simulated device's windows) or a deployment's largest device dataset")
    a = s.aggregation
    _require(a.num_malicious >= 0, "aggregation.num_malicious", "must be >= 0", "aggregation.num_malicious=1")
    if a.rule in ("krum", "multikrum"):
        _require(fed.cohort_size > 2 * a.num_malicious + 2, "aggregation.num_malicious",
                 f"Krum needs cohort_size > 2 * num_malicious + 2 ({fed.cohort_size} <= {2 * a.num_malicious + 2})",
                 "a larger federation.cohort_size or a smaller aggregation.num_malicious")
        _require(1 <= a.num_to_select <= fed.cohort_size, "aggregation.num_to_select",
                 f"must be between 1 and federation.cohort_size ({fed.cohort_size})", "aggregation.num_to_select=1")
    _require(0 <= a.trim_fraction < 0.5, "aggregation.trim_fraction", "must be in [0, 0.5)", "e.g. 0.1")
    _require(s.checkpoint.dir is None or bool(str(s.checkpoint.dir).strip()), "checkpoint.dir", "is empty",
             "null (the run's output dir) or a folder")
    from client.faults import KINDS  # numpy and flwr, no torch; the ClientApp reads the same table

    for index, kind in (s.faults.inject or {}).items():
        _require(0 <= int(index) < size, f"faults.inject.{index}", f"no device {index} in a fleet of {size}",
                 f"a device index in [0, {size})")
        _require(str(kind) in KINDS, f"faults.inject.{index}", f"unknown fault '{kind}'", ", ".join(KINDS))


def _validate_references(s: Settings) -> None:
    """Tracking, simulation, LoRA, data and pretraining settings (method and trainer names are schema enums)."""
    _require(bool(str(s.tracking.uri).strip()), "tracking.uri", "is empty", "e.g. sqlite:///mlflow.db")
    _require(s.simulation.num_cpus_per_client > 0, "simulation.num_cpus_per_client", "must be > 0", "e.g. 1")
    _validate_simulation(s)
    _require(0 <= s.method.lora.dropout < 1, "method.lora.dropout", "must be in [0, 1)", "method.lora.dropout=0.0")
    _require(s.method.lora.alpha > 0, "method.lora.alpha", "must be > 0", "method.lora.alpha=16")
    _require(s.client.eval_batches >= 1, "client.eval_batches", "must be >= 1", "client.eval_batches=4")
    _require(s.data.central_eval_windows >= 1, "data.central_eval_windows", "must be >= 1", "e.g. 96")
    if s.data.name != "shakespeare" and s.data.partitioner in ("dirichlet", "natural_id"):
        _require(bool(s.data.partition_by), "data.partition_by", f"is needed by partitioner '{s.data.partitioner}'",
                 "the label (dirichlet) or id (natural_id) column")
    _require(s.data.dirichlet_alpha > 0, "data.dirichlet_alpha", "must be > 0", "e.g. 0.5")
    p = s.model.pretrain
    for attr in ("steps", "batch_size"):
        _require(getattr(p, attr) >= 1, f"model.pretrain.{attr}", "must be >= 1", "see conf/model/")
    _require(p.lr > 0, "model.pretrain.lr", "must be > 0", "e.g. 3e-3")
    _require(0 <= p.warmup_steps <= p.steps, "model.pretrain.warmup_steps", "must be in [0, model.pretrain.steps]",
             "fewer warmup steps")

