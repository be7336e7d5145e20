"""Cohort batching: a round's backprop-LoRA devices trained together, one base forward for many adapters.

The devices of a cohort share the frozen base model and differ only in their LoRA adapters and their data. As
multi-LoRA serving systems do (Punica, S-LoRA), the in-process engine (``simulation.backend=inprocess`` with
``simulation.cohort_batching=true``) stacks K devices' batches into one batch of K x batch_size windows and
their adapters into [K, r, in] / [K, out, r] tensors: every adapted linear layer computes
``W x + s * B_k (A_k x)`` for the rows of device k (one GEMM for the base, two batched GEMMs for the adapters).

Each device's loss is its own mean next-token loss, and the step minimises their sum: a device's adapter only
enters its own rows, so each gets exactly its own gradient, and AdamW (element-wise, same step count, same lr,
no weight decay) updates each device's slice exactly as its own optimizer would. The same batches (the same
seeded ``batch_indices``), the same initial adapter, the same loss: what a device computes is the plain
trainer's result up to floating-point reassociation (tests/test_throughput.py bounds the difference).

ZeroQAT's forward-only SPSA steps batch the same way (:func:`train_cohort_zeroqat`): each device perturbs its own
adapter slice along its own seeded directions, and one forward gives every device's loss.

Only work that shares a shape is batched together: the same trainer (``lora_backprop`` or ``zeroqat``), rank,
local steps, batch size (and learning rate). Everything else (FedSpine's pruned sub-models, DP-SGD, devices
with injected faults) runs through the ordinary handler.
"""

from __future__ import annotations

import copy
import time
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from client.device_detect import attention_for, autocast_dtype, base_dtype, hold_frozen_in
from client.fused_ops import (SharedCast, add_multi_lora, multi_lora_linear, token_cross_entropy,
                              use_frozen_rms_norms)
from client.trainers.base import TrainResult, batch_indices, loss_metrics
from models.base_checkpoint import base_dir, load_base_model
from models.lora import peft_config
from protocol.work import Work

BATCHABLE_TRAINERS = ("lora_backprop",)
PEFT_PREFIX = "base_model.model."
EVAL_CHUNK_BATCHES = 8  # federated evaluation's forward batch, in client batches


class MultiLoraLinear(nn.Module):
    """A frozen linear layer with one LoRA adapter per group of rows (K groups of equal size)."""

    def __init__(self, base: nn.Linear, scaling: float, cast: SharedCast | None = None) -> None:
        super().__init__()
        self.base = base
        self.scaling = scaling
        self.cast = cast or SharedCast()  # shared by the model's layers: layers reading one input cast it once
        self.lora_A: torch.Tensor | None = None  # [K, r, in]
        self.lora_B: torch.Tensor | None = None  # [K, out, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = isinstance(self.base, nn.Linear)
        if dense and torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
            # autocast would cast x for the base matmul and again for the adapter's (and q, k, v each): once
            x = self.cast(x, torch.get_autocast_dtype(x.device.type))
        if dense and torch.is_grad_enabled() and self.lora_A.requires_grad:
            return multi_lora_linear(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling)
        # no gradient (evaluation, ZeroQAT) or a quantized base: the same expression, autograd's way
        return add_multi_lora(self.base(x), x, self.lora_A, self.lora_B, self.scaling)[0]


class MultiLoraModel:
    """A private copy of the dense base with every LoRA target wrapped in :class:`MultiLoraLinear`."""

    def __init__(self, base: nn.Module, targets: tuple[str, ...], scaling: float) -> None:
        self.model = copy.deepcopy(base)
        self.model.requires_grad_(False)
        self.layers: dict[str, MultiLoraLinear] = {}
        self.cast = SharedCast()
        for name, module in list(self.model.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in targets and isinstance(child, nn.Linear):
                    wrapped = MultiLoraLinear(child, scaling, self.cast)
                    setattr(module, child_name, wrapped)
                    self.layers[f"{name}.{child_name}" if name else child_name] = wrapped

    def load(self, adapters: list[dict[str, np.ndarray]]) -> list[torch.Tensor]:
        """Stack the devices' adapters (PEFT key names) into trainable [K, ...] tensors; returns them."""
        expected = {f"{PEFT_PREFIX}{path}.lora_{ab}.weight" for path in self.layers for ab in "AB"}
        for adapter in adapters:
            if set(adapter) != expected:
                raise ValueError(f"adapter keys do not match the model: missing {sorted(expected - set(adapter))[:3]}"
                                 f", unexpected {sorted(set(adapter) - expected)[:3]}")
        params = []
        for path, layer in self.layers.items():
            a = np.stack([np.asarray(ad[f"{PEFT_PREFIX}{path}.lora_A.weight"], dtype=np.float32) for ad in adapters])
            b = np.stack([np.asarray(ad[f"{PEFT_PREFIX}{path}.lora_B.weight"], dtype=np.float32) for ad in adapters])
            device = layer.base.weight.device  # the adapters live with the base (fp32 whatever the base's dtype)
            layer.lora_A = torch.from_numpy(a).to(device).requires_grad_(True)
            layer.lora_B = torch.from_numpy(b).to(device).requires_grad_(True)
            params += [layer.lora_A, layer.lora_B]
        return params

    def release(self) -> None:
        """Drop the loaded adapters (the next load brings its own)."""
        for layer in self.layers.values():
            layer.lora_A = layer.lora_B = None
        self.cast.clear()

    def adapters(self, count: int) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        for path, layer in self.layers.items():
            a, b = layer.lora_A.detach().float().cpu().numpy(), layer.lora_B.detach().float().cpu().numpy()
            for k in range(count):
                out[k][f"{PEFT_PREFIX}{path}.lora_A.weight"] = a[k].copy()
                out[k][f"{PEFT_PREFIX}{path}.lora_B.weight"] = b[k].copy()
        return out


@lru_cache(maxsize=2)
def _dense_base(folder: str):
    from pathlib import Path

    return load_base_model(Path(folder))


_MODELS: dict[tuple, MultiLoraModel] = {}


def multi_lora_model(runtime, rank: int) -> MultiLoraModel:
    s = runtime.settings
    cfg = peft_config(s.method.lora, rank)
    scaling = cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)
    key = (id(runtime), rank, scaling)
    if key not in _MODELS:
        _MODELS.clear()
        base = hold_frozen_in(_dense_base(str(base_dir(s))).to(runtime.device), base_dtype(runtime.device,
                                                                                         s.client.precision))
        holder = MultiLoraModel(base, tuple(s.method.lora.target_modules), scaling)
        use_frozen_rms_norms(holder.model)  # same forward, a leaner backward (client/fused_ops.py)
        dtype = autocast_dtype(runtime.device, s.client.precision)
        if dtype is not None:
            frozen = [layer.base for layer in holder.layers.values()] + [holder.model.get_output_embeddings()]
            cast_for_autocast(holder.model, frozen, dtype, runtime.device)
        _MODELS[key] = holder
    return _MODELS[key]


def cast_for_autocast(model: nn.Module, linears: list[nn.Linear], dtype: torch.dtype, device: torch.device) -> None:
    """Store frozen linear weights in the autocast dtype once, instead of autocast casting them on every call.

    Autocast casts an fp32 weight to ``dtype`` before each matmul (``client.device_detect.autocast`` runs it
    without its cast cache), so the stored cast gives the same matmul inputs; embeddings and norms keep their
    fp32 weights. A weight shared with the input embedding (tied) is given its own copy. Attention: :func:`attention_for`.
    """
    for linear in linears:
        linear.weight = nn.Parameter(linear.weight.detach().to(dtype).clone(), requires_grad=False)
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.detach().to(dtype).clone(), requires_grad=False)
    attention_for(model, device, dtype)


def batch_key(work: Work, trainer: str, settings=None) -> tuple | None:
    """Work that may share a batched step has the same key (None: not batchable)."""
    if trainer == "zeroqat" and settings is not None and settings.zeroqat.trainable == "lora":
        return (trainer, work.rank, work.local_steps, work.batch_size)  # ZeroQAT's lr is zeroqat.lr
    if trainer not in BATCHABLE_TRAINERS:
        return None
    return (trainer, work.rank, work.local_steps, work.batch_size, work.lr)


# ------------------------------------------------------------------ ZeroQAT (forward-only SPSA), batched
class _ZoMultiLora:
    """A private copy of the runtime's quantized ZeroQAT model with each PEFT LoRA layer replaced by a
    :class:`MultiLoraLinear` over the same (packed, quantized) base layer. Activations are quantized per token,
    so a device's rows see exactly what they would see alone."""

    def __init__(self, peft_quantized: nn.Module, dtype: torch.dtype | None, device: torch.device) -> None:
        from peft.tuners.lora import LoraLayer

        from quantization.layers import PackedLinear

        self.model = copy.deepcopy(peft_quantized)
        self.layers: dict[str, MultiLoraLinear] = {}
        for name, module in list(self.model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, LoraLayer):
                    wrapped = MultiLoraLinear(child.base_layer, float(child.scaling["default"]))
                    setattr(module, child_name, wrapped)
                    self.layers[f"{name}.{child_name}"] = wrapped
                    if isinstance(child.base_layer, PackedLinear):
                        child.base_layer.hold_dequantized(dtype)
        if dtype is not None:
            cast_for_autocast(self.model, [self.model.get_output_embeddings()], dtype, device)

    def load(self, adapters: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Stacked [K, ...] tensors by adapter key (PEFT's names)."""
        out = {}
        device = next(self.model.parameters()).device
        for path, layer in self.layers.items():
            layer.lora_A = torch.from_numpy(np.stack([np.asarray(ad[f"{path}.lora_A.weight"], np.float32)
                                                      for ad in adapters])).to(device)
            layer.lora_B = torch.from_numpy(np.stack([np.asarray(ad[f"{path}.lora_B.weight"], np.float32)
                                                      for ad in adapters])).to(device)
            out[f"{path}.lora_A.weight"], out[f"{path}.lora_B.weight"] = layer.lora_A, layer.lora_B
        return out


_ZO_MODELS: dict[tuple, _ZoMultiLora] = {}


def zo_multi_lora(runtime, rank: int) -> _ZoMultiLora:
    from client.trainers.zeroqat import _quantized_model

    key = (id(runtime), rank)
    if key not in _ZO_MODELS:
        _ZO_MODELS.clear()
        dtype = autocast_dtype(runtime.device, runtime.settings.client.precision)
        _ZO_MODELS[key] = _ZoMultiLora(_quantized_model(runtime, rank), dtype, runtime.device)
    return _ZO_MODELS[key]


@torch.no_grad()
def train_cohort_zeroqat(runtime, works: list[Work], received: list[dict[str, np.ndarray]]) -> list[TrainResult]:
    """ZeroQAT's SPSA steps for K devices at once: each device perturbs its own adapter slice along its own
    seeded directions (drawn tensor by tensor in the same sorted-name order as ``zeroqat.spsa``), one batched
    forward gives every device's L+ (then L-), and each applies its own step. Same seeds, batches, losses and
    update rule as ``client.trainers.zeroqat``; the reply is built the same way (seed upload included)."""
    from zeroqat import upload
    from zeroqat.spsa import lr_at, noise, step_coefficient, step_seeds

    cfg = runtime.settings.zeroqat
    k, w0 = len(works), works[0]
    holder = zo_multi_lora(runtime, w0.rank)
    stacked = holder.load(received)
    names = sorted(stacked)  # zeroqat.model.trainable_tensors: the order z is drawn in
    data = [runtime.device_data(w.device_index) for w in works]
    batches = [batch_indices(len(d.train_inputs), w.batch_size, w.local_steps, w.seed) for d, w in zip(data, works)]
    seeds = [step_seeds(w.seed, w.local_steps, cfg.perturbations) for w in works]
    steps, q = seeds[0].shape

    def directions(t: int, i: int) -> dict[str, torch.Tensor]:
        """Every device's z for step t, query i, stacked like the adapters (drawn once, used four times)."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for j in range(k):
            gen = torch.Generator().manual_seed(int(seeds[j][t, i]))
            for name in names:
                out[name].append(noise(stacked[name][j].shape, gen))
        # drawn on the CPU (zeroqat.spsa.noise: the same z on every device), then moved to the adapters
        return {name: torch.stack(zs).to(device=stacked[name].device, dtype=stacked[name].dtype)
                for name, zs in out.items()}

    def move(z: dict[str, torch.Tensor], alpha: float) -> None:  # every device's adapter += alpha * its own z
        for name in names:
            stacked[name].add_(z[name], alpha=alpha)

    def losses_at(t: int) -> list[float]:
        x = torch.cat([d.train_inputs[b[t]] for d, b in zip(data, batches)]).to(runtime.device)
        y = torch.cat([d.train_labels[b[t]] for d, b in zip(data, batches)]).to(runtime.device)
        # cast, then drop the last position (a strided cast of a slice is ~5x slower); the summation order of
        # zeroqat.batch_loss is kept: SPSA's (L+ - L-) / 2 eps resolves differences at the last float bit
        logits = holder.model(input_ids=x, use_cache=False).logits.float()[:, :-1]
        target = y[:, 1:]
        rows = len(x) // k
        out = []
        for j in range(k):  # each device's summed loss over its own rows, as zeroqat.batch_loss sums it
            lj, tj = logits[j * rows:(j + 1) * rows], target[j * rows:(j + 1) * rows]
            total = nn.functional.cross_entropy(lj.reshape(-1, lj.size(-1)), tj.reshape(-1), ignore_index=-100,
                                                reduction="sum")
            out.append(total.item() / max(int((tj != -100).sum().item()), 1))
        return out

    grads = np.zeros((k, steps, q), dtype=np.float32)
    losses: list[list[float]] = [[] for _ in range(k)]
    start = time.perf_counter()
    with runtime.autocast():
        for t in range(steps):
            step_losses: list[list[float]] = [[] for _ in range(k)]
            zs = [directions(t, i) for i in range(q)]
            for i, z in enumerate(zs):
                move(z, cfg.eps)
                plus = losses_at(t)
                move(z, -2 * cfg.eps)
                minus = losses_at(t)
                move(z, cfg.eps)
                for j in range(k):
                    g = (plus[j] - minus[j]) / (2 * cfg.eps)
                    if cfg.grad_clip > 0:
                        g = max(-cfg.grad_clip, min(cfg.grad_clip, g))
                    grads[j, t, i] = g
                    step_losses[j] += [plus[j], minus[j]]
            lr_t = lr_at(t, steps, cfg.lr, cfg.lr_schedule)
            for j in range(k):
                for i, z in enumerate(zs):
                    coefficient = step_coefficient(grads[j, t, i], lr_t, q)
                    for name in names:
                        stacked[name][j].add_(z[name][j], alpha=coefficient)
                losses[j].append(sum(step_losses[j]) / len(step_losses[j]))
    compute_s = time.perf_counter() - start
    results = []
    for j, work in enumerate(works):
        adapter = {name: stacked[name][j].cpu().numpy().copy() for name in names}
        seed_upload = upload.encode(seeds[j], grads[j])
        if cfg.seed_upload:
            adapter = upload.replay_adapter(received[j], seed_upload, cfg.lr, cfg.lr_schedule)
        metrics = {**loss_metrics(losses[j]), "compute_s": compute_s / k,
                   "zo_grad_abs_mean": float(np.abs(grads[j]).mean()),
                   "adapter_bytes": float(sum(v.nbytes for v in adapter.values())),
                   "seed_bytes": float(sum(v.nbytes for v in seed_upload.values())), "batched_devices": float(k)}
        results.append(TrainResult(adapter=adapter, num_examples=len(data[j].train_inputs), metrics=metrics,
                                   upload=seed_upload if cfg.seed_upload else None))
    for layer in holder.layers.values():
        layer.lora_A = layer.lora_B = None
    return results


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with every position: ``labels[:, 1:]``, then -100 (ignored) at the end."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)


def train_cohort(runtime, works: list[Work], received: list[dict[str, np.ndarray]]) -> list[TrainResult]:
    """Backprop LoRA for K devices at once (same rank, steps, batch size and lr); one TrainResult each."""
    k = len(works)
    w0 = works[0]
    holder = multi_lora_model(runtime, w0.rank)
    model = holder.model
    params = holder.load(received)
    optimizer = torch.optim.AdamW(params, lr=w0.lr, weight_decay=0.0)
    data = [runtime.device_data(w.device_index) for w in works]
    batches = [batch_indices(len(d.train_inputs), w.batch_size, w.local_steps, w.seed) for d, w in zip(data, works)]
    device = runtime.device
    model.train()
    losses = []
    start = time.perf_counter()
    with runtime.autocast():
        for step in range(w0.local_steps):
            x = torch.cat([d.train_inputs[b[step]] for d, b in zip(data, batches)]).to(device)
            y = torch.cat([d.train_labels[b[step]] for d, b in zip(data, batches)]).to(device)
            logits = model(input_ids=x, use_cache=False).logits
            target = shifted_targets(y)  # no copy of the logits without their last position
            per_token = token_cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1))
            loss_sum = per_token.view(k, -1).sum(1)
            tokens = (target != -100).view(k, -1).sum(1).clamp(min=1)
            loss = loss_sum / tokens  # each device's mean next-token loss
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            losses.append(loss.detach())
    compute_s = time.perf_counter() - start
    model.eval()
    per_device = torch.stack(losses).mean(0).tolist()
    per_step = torch.stack(losses).tolist()  # steps x devices
    adapters = holder.adapters(k)
    holder.release()
    return [
        TrainResult(adapter=adapters[i], num_examples=len(data[i].train_inputs),
                    # compute_s: the device's share of the batched step (cost.clock=analytic does not read it)
                    metrics={**loss_metrics([row[i] for row in per_step]), "train_loss": per_device[i],
                             "compute_s": compute_s / k, "batched_devices": float(k)})
        for i in range(k)
    ]


# ------------------------------------------------------------------ the ClientApp side (in-process engine)
def train_replies(plain_settings: dict, messages: list, contexts: list) -> dict[int, object]:
    """Replies (by position in ``messages``) for the train messages that can be batched; the rest are left
    to the ordinary handler. Groups of one device are left to it as well."""
    from client.app import reply_for
    from client.device_detect import trainer_of
    from client.faults import injected_kind
    from client.runtime import get_runtime
    from protocol.messages import ARRAYS, CONFIG, STRUCTURE, from_array_record

    runtime = get_runtime(plain_settings)
    s = runtime.settings
    groups: dict[tuple, list[int]] = {}
    chunk_trainer: dict[int, str] = {}
    for i, (msg, context) in enumerate(zip(messages, contexts)):
        work = Work.from_config(msg.content[CONFIG])
        if injected_kind(plain_settings, work.device_index) or STRUCTURE in msg.content:
            continue
        trainer = trainer_of(context.node_config, s.client.trainer, s.fleet.classes,
                             runtime.devices[work.device_index].class_name, work.trainer)
        key = batch_key(work, trainer, s)
        if key is not None:
            groups.setdefault(key, []).append(i)
            chunk_trainer[i] = trainer
    replies: dict[int, object] = {}
    cap = max(1, s.simulation.max_batched_devices)
    for members in groups.values():
        for lo in range(0, len(members), cap):
            chunk = members[lo:lo + cap]
            if len(chunk) < 2:
                continue
            started = time.perf_counter()
            works = [Work.from_config(messages[i].content[CONFIG]) for i in chunk]
            received = [from_array_record(messages[i].content[ARRAYS]) for i in chunk]
            decode_s = (time.perf_counter() - started) / len(chunk)
            batched = train_cohort_zeroqat if chunk_trainer[chunk[0]] == "zeroqat" else train_cohort
            results = batched(runtime, works, received)
            timing = {"handler_s": (time.perf_counter() - started) / len(chunk), "decode_s": decode_s}
            for i, work, got, result in zip(chunk, works, received, results):
                replies[i] = reply_for(messages[i], work, got, result, None, timing)
    return replies


@torch.no_grad()
def evaluate_replies(plain_settings: dict, messages: list) -> dict[int, object]:
    """Federated evaluation of devices that evaluate the same global adapter at the same rank: one adapter load
    and larger forward batches over all their test windows; each device's own loss, accuracy and tokens."""
    from flwr.app import Message, MetricRecord, RecordDict

    from client.runtime import get_runtime
    from protocol.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, from_array_record

    runtime = get_runtime(plain_settings)
    groups: dict[tuple, list[int]] = {}
    for i, msg in enumerate(messages):
        work = Work.from_config(msg.content[CONFIG])
        groups.setdefault((id(msg.content[ARRAYS]), work.rank, work.batch_size), []).append(i)
    replies: dict[int, object] = {}
    for (_, rank, batch_size), members in groups.items():
        if len(members) < 2:
            continue
        start = time.perf_counter()
        holder = multi_lora_model(runtime, rank)  # the global adapter as a cohort of one, over every row
        holder.load([from_array_record(messages[members[0]].content[ARRAYS])])
        model = holder.model
        n = runtime.settings.client.eval_batches * batch_size
        works = [Work.from_config(messages[i].content[CONFIG]) for i in members]
        parts = [runtime.device_data(w.device_index) for w in works]
        inputs = torch.cat([d.test_inputs[:n] for d in parts]).to(runtime.device)
        labels = torch.cat([d.test_labels[:n] for d in parts]).to(runtime.device)
        owner = torch.cat([torch.full((len(d.test_inputs[:n]),), j) for j, d in enumerate(parts)]).to(runtime.device)
        loss_w, correct_w, tokens_w = [], [], []
        model.eval()
        chunk = EVAL_CHUNK_BATCHES * batch_size  # logits of a chunk stay small (memory traffic, not FLOPs)
        with runtime.autocast():
            for lo in range(0, len(inputs), chunk):
                x, y = inputs[lo:lo + chunk], labels[lo:lo + chunk]
                logits = model(input_ids=x, use_cache=False).logits.float()
                target = shifted_targets(y)
                mask = target != -100
                per_token = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1),
                                                        ignore_index=-100, reduction="none").view(target.shape)
                loss_w.append(per_token.sum(1))
                correct_w.append(((logits.argmax(-1) == target) & mask).sum(1))
                tokens_w.append(mask.sum(1))
        holder.release()
        loss_w, correct_w, tokens_w = torch.cat(loss_w), torch.cat(correct_w), torch.cat(tokens_w)
        elapsed = (time.perf_counter() - start) / len(members)
        for j, (i, work) in enumerate(zip(members, works)):
            mine = owner == j
            tokens = int(tokens_w[mine].sum())
            denom = max(tokens, 1)
            metrics = {
                NUM_EXAMPLES: tokens,
                "device-index": work.device_index,
                "eval_loss": float(loss_w[mine].sum()) / denom,
                "eval_accuracy": int(correct_w[mine].sum()) / denom,
                "compute_s": elapsed,
            }
            replies[i] = Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=messages[i])
    return replies
