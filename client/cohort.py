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

Only work that shares a shape is batched together: the ``lora_backprop`` trainer, the same rank, local steps,
batch size and learning rate. Everything else runs through the ordinary handler.
"""

from __future__ import annotations

import copy
import time
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from client.trainers.base import TrainResult, batch_indices
from models.base_checkpoint import base_dir, load_base_model
from models.lora import peft_config
from protocol.messages import Work

BATCHABLE_TRAINERS = ("lora_backprop",)
PEFT_PREFIX = "base_model.model."


class MultiLoraLinear(nn.Module):
    """A frozen linear layer with one LoRA adapter per group of rows (K groups of equal size)."""

    def __init__(self, base: nn.Linear, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = scaling
        self.lora_A: torch.Tensor | None = None  # [K, r, in]
        self.lora_B: torch.Tensor | None = None  # [K, out, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        k = self.lora_A.shape[0]
        xk = x.reshape(k, -1, x.shape[-1])  # rows of device k are contiguous
        lora = torch.bmm(torch.bmm(xk, self.lora_A.transpose(1, 2)), self.lora_B.transpose(1, 2))
        return out + lora.reshape(out.shape) * self.scaling


class MultiLoraModel:
    """A private copy of the dense base with every LoRA target wrapped in :class:`MultiLoraLinear`."""

    def __init__(self, base: nn.Module, targets: tuple[str, ...], scaling: float) -> None:
        self.model = copy.deepcopy(base)
        self.model.requires_grad_(False)
        self.layers: dict[str, MultiLoraLinear] = {}
        for name, module in list(self.model.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in targets and isinstance(child, nn.Linear):
                    wrapped = MultiLoraLinear(child, scaling)
                    setattr(module, child_name, wrapped)
                    self.layers[f"{name}.{child_name}" if name else child_name] = wrapped

    def load(self, adapters: list[dict[str, np.ndarray]]) -> list[torch.Tensor]:
        """Stack the devices' adapters (PEFT key names) into trainable [K, ...] tensors; returns them."""
        params = []
        for path, layer in self.layers.items():
            a = np.stack([np.asarray(ad[f"{PEFT_PREFIX}{path}.lora_A.weight"], dtype=np.float32) for ad in adapters])
            b = np.stack([np.asarray(ad[f"{PEFT_PREFIX}{path}.lora_B.weight"], dtype=np.float32) for ad in adapters])
            layer.lora_A = torch.from_numpy(a).requires_grad_(True)
            layer.lora_B = torch.from_numpy(b).requires_grad_(True)
            params += [layer.lora_A, layer.lora_B]
        return params

    def adapters(self, count: int) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
        for path, layer in self.layers.items():
            a, b = layer.lora_A.detach().float().numpy(), layer.lora_B.detach().float().numpy()
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
        base = _dense_base(str(base_dir(s))).to(runtime.device)
        _MODELS[key] = MultiLoraModel(base, tuple(s.method.lora.target_modules), scaling)
    return _MODELS[key]


def batch_key(work: Work, trainer: str) -> tuple | None:
    """Work that may share a batched step has the same key (None: not batchable)."""
    if trainer not in BATCHABLE_TRAINERS:
        return None
    return (trainer, work.rank, work.local_steps, work.batch_size, work.lr)


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
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            target = y[:, 1:]
            per_token = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                    ignore_index=-100, reduction="none")
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
    adapters = holder.adapters(k)
    for layer in holder.layers.values():  # release the round's tensors
        layer.lora_A = layer.lora_B = None
    return [
        TrainResult(adapter=adapters[i], num_examples=len(data[i].train_inputs),
                    # compute_s: the device's share of the batched step (cost.clock=analytic does not read it)
                    metrics={"train_loss": per_device[i], "compute_s": compute_s / k, "batched_devices": float(k)})
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
    for i, (msg, context) in enumerate(zip(messages, contexts)):
        work = Work.from_config(msg.content[CONFIG])
        if injected_kind(plain_settings, work.device_index) or STRUCTURE in msg.content:
            continue
        trainer = trainer_of(context.node_config, s.client.trainer, s.fleet.classes,
                             runtime.devices[work.device_index].class_name, work.trainer)
        key = batch_key(work, trainer)
        if key is not None:
            groups.setdefault(key, []).append(i)
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
            results = train_cohort(runtime, works, received)
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
    from models.lora import load_adapter_arrays
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
        model = runtime.adapter_model(rank)
        load_adapter_arrays(model, from_array_record(messages[members[0]].content[ARRAYS]))
        n = runtime.settings.client.eval_batches * batch_size
        works = [Work.from_config(messages[i].content[CONFIG]) for i in members]
        parts = [runtime.device_data(w.device_index) for w in works]
        inputs = torch.cat([d.test_inputs[:n] for d in parts]).to(runtime.device)
        labels = torch.cat([d.test_labels[:n] for d in parts]).to(runtime.device)
        owner = torch.cat([torch.full((len(d.test_inputs[:n]),), j) for j, d in enumerate(parts)])
        loss_w, correct_w, tokens_w = [], [], []
        model.eval()
        chunk = max(batch_size, runtime.settings.simulation.max_batched_devices * batch_size)
        with runtime.autocast():
            for lo in range(0, len(inputs), chunk):
                x, y = inputs[lo:lo + chunk], labels[lo:lo + chunk]
                logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
                target = y[:, 1:]
                mask = target != -100
                per_token = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                        ignore_index=-100, reduction="none").view(target.shape)
                loss_w.append(per_token.sum(1))
                correct_w.append(((logits.argmax(-1) == target) & mask).sum(1))
                tokens_w.append(mask.sum(1))
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
