"""Record-level DP-SGD inside one client's local training: Opacus ``PrivacyEngine`` on the LoRA parameters.

Trainer ``lora_dpsgd`` (client/trainers registry; it lives with the other trainers, so privacy/ imports nothing
of the client). The user-level mixin selects it when
``privacy.record.enabled``: every training window of the device is a record; batches are Poisson-sampled by
Opacus's DPDataLoader (rate batch_size / windows), per-window gradients of the LoRA parameters are clipped to
``dp_record_clip`` and noised with ``dp_record_sigma``. Only LoRA parameters require grad, so Opacus computes
per-sample gradients of PEFT's lora_A / lora_B Linear layers only (frozen base weights carry no hooks' work).
Each round's steps are reported (``dp_record_steps``, ``dp_record_q``, ``dp_record_sigma``); the server composes
them per device across rounds (privacy.dp_fedavg). This guarantee is about one window of one device and is
reported separately from the user-level one.
Known pitfall (opacus#820, Opacus 1.5.4 + PEFT 0.18 corrupted LoRA updates): tests/test_privacy_dpsgd.py
checks the pinned pair (only LoRA changes, no NaN, per-sample gradients equal a hand computation).
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from client.device_detect import no_autocast
from client.device_data import DeviceData
from client.trainers.base import TrainResult, loss_metrics
from models.lora import adapter_arrays
from models.loss import train_loss
from protocol.work import Work


class LoraDpSgdTrainer:
    name = "lora_dpsgd"

    def train(self, model, data: DeviceData, work: Work) -> TrainResult:
        from opacus import PrivacyEngine

        sigma = float(work.extra["dp_record_sigma"])
        clip = float(work.extra["dp_record_clip"])
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device  # Opacus draws its noise on the parameters' device, with this generator
        generator = torch.Generator().manual_seed(int(work.seed))
        loader = DataLoader(TensorDataset(data.train_inputs, data.train_labels), batch_size=work.batch_size,
                            shuffle=True, generator=generator)
        model.train()  # Opacus refuses a model in eval mode (a reused runtime model may have been evaluated last)
        engine = PrivacyEngine(accountant="rdp")
        optimizer = torch.optim.AdamW(params, lr=work.lr, weight_decay=0.0)
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma, max_grad_norm=clip,
            poisson_sampling=True, noise_generator=torch.Generator(device=device).manual_seed(int(work.seed) + 1),
        )
        dp_model.train()
        losses, steps = [], 0
        start = time.perf_counter()
        try:
            while steps < work.local_steps:
                for x, y in dp_loader:
                    if steps >= work.local_steps:
                        break
                    x, y = x.to(device), y.to(device)  # an empty Poisson batch is made on the CPU
                    dp_optimizer.zero_grad(set_to_none=True)
                    loss = train_loss(dp_model(input_ids=x).logits, y, groups=max(len(x), 1)).mean()  # per record
                    loss.backward()
                    with no_autocast(device.type):  # clipping's einsum would run in bf16/fp16 under autocast
                        dp_optimizer.step()
                    steps += 1
                    if len(x):
                        losses.append(loss.item())
        finally:
            dp_model.to_standard_module()  # remove Opacus hooks: the runtime reuses this PEFT model
            for p in params:
                p.grad = None
        model.eval()
        sample_rate = float(dp_optimizer.expected_batch_size) / len(data.train_inputs)
        n = len(data.train_inputs)
        return TrainResult(
            adapter=adapter_arrays(model),
            num_examples=n,
            metrics={
                **loss_metrics(losses),
                "train_loss": sum(losses) / max(len(losses), 1),
                "compute_s": time.perf_counter() - start,
                "dp_record_steps": float(steps),
                "dp_record_q": min(1.0, sample_rate),
                "dp_record_sigma": sigma,
                "dp_record_epsilon_round": float(engine.accountant.get_epsilon(delta=1.0 / max(n, 2) ** 1.1)),
            },
        )
