"""FedSpine (Yao et al. 2025) and the baselines that share its harness, as one Flower strategy.

Per round and device: an arm (pruning ratio, LoRA rank) from a policy -- ``bandit`` (smooth UCB, per device,
:mod:`strategies.bandit`), ``random``, ``fixed`` or ``class_ranks`` (HetLoRA-style fixed rank per device
class) -- restricted to arms whose training fits the device's memory at its current pruned shape; the
device's kept-structure masks travel with its work; replies (deltas in pruned, rank-truncated coordinates plus
masks) are mapped back to full coordinates (a device downloads only the global adapter's coordinates it
holds: sliced to its structure and rank) and averaged per coordinate over their holders
(:mod:`strategies.hetero_aggregation`). The server keeps each device's structure between its rounds.

``method.fedspine.keep_forward_only`` (method=combined): devices whose class trainer is forward-only (ZeroQAT
phones on packed bases) keep it: they train the dense global adapter at full rank and hold every coordinate.
``method.fedspine.masks`` (docs/privacy.md): ``local`` masks come from the device's own gradients (LoRAPrune);
``public`` ones from the dense base's activations on the public split, which the server recomputes and checks (``auto``: public under DP).

Reward of a device's arm after a round (each term relative to this round's cohort; docs/fedspine.md):

    reward = w_loss * gain/max_gain + w_prune * progress + w_importance * update/max_update - w_time * T/T_ref

``gain`` = its local loss drop (first vs last quarter of its iterations, relative), ``progress`` = the share of
the remaining way to ``target_sparsity`` it covered this round (1 once there), ``update`` = the size of its
LoRA update ||s(B'A' - BA)||_F, ``T`` = its simulated completion time (compute + transfers) and ``T_ref`` the
cohort's median completion time (``reward.time_reference``; or its slowest, ``max``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from transformers import AutoConfig

from fleet.devices import Device
from models.base_checkpoint import base_dir
from protocol.messages import ARRAYS, Update, Work, to_array_record, work_message_content
from fleet.pricing import FORWARD_ONLY_TRAINERS
from pruning.importance import public_scores, public_structure
from pruning.schedule import step_levels
from runconfig.combinations import masks_under
from pruning.structure import Dims, Structure, lora_index, scatter_from, slice_to
from runconfig.choices import FEDSPINE_METHODS, TrainerName
from runconfig.errors import ConfigError
from strategies.bandit import SmoothUCB
from strategies.fleet_fedavg import FleetFedAvg, seeded
from strategies.hetero_aggregation import SubUpdate, aggregate_hetero, coverage

logger = logging.getLogger(__name__)

TRAINER = TrainerName.fedspine_prune.value  # a plain str: it travels in messages


def cohort_rewards(rows: list[dict], weights) -> list[float]:
    """Rewards for one round's cohort: rows have gain, progress, update, time (see the module docstring).

    With ``time_reference: median`` a device that takes k times the cohort's median pays k * w_time: the
    straggler that sets the round's length pays most, which is what makes a synchronous round slow.
    """
    max_gain = max((abs(r["gain"]) for r in rows), default=0.0) or 1.0
    max_update = max((r["update"] for r in rows), default=0.0) or 1.0
    times = [r["time"] for r in rows]
    ref_time = (float(np.median(times)) if weights.time_reference == "median" else max(times, default=0.0)) or 1.0
    return [
        weights.loss * r["gain"] / max_gain + weights.prune * r["progress"]
        + weights.importance * r["update"] / max_update - weights.time * r["time"] / ref_time
        for r in rows
    ]


LEARN_METRICS = ("rank", "sparsity_before", "sparsity", "loss_start", "loss_end", "update_norm")


class FedSpine(FleetFedAvg):
    def __init__(self, settings, devices, model_shape, concurrency, observers=()) -> None:
        super().__init__(settings, devices, model_shape, concurrency, observers)
        if settings.method.fedspine is None:
            raise ConfigError(f"config key 'method.fedspine': method '{settings.method.name}' needs it. "
                              "Fix: use a conf/method/ file of the FedSpine family (fedspine, hetlora, ...)")
        self.cfg = settings.method.fedspine
        config = AutoConfig.from_pretrained(str(base_dir(settings)))
        self.dims, self.hidden = Dims.of(config), config.hidden_size
        self.max_rank = settings.method.lora.rank
        self.structures: dict[int, Structure] = {}
        self.bandits: dict[int, SmoothUCB] = {}
        self.arm_log: list[dict] = []  # one row per device-round: round, device, class, ratio, rank, reward, ...
        self._arms: dict[tuple[int, int], tuple[float, int] | None] = {}
        self._bytes_up: dict[int, int] = {}
        self._round_metrics: dict[str, float] = {}
        self.masks = masks_under(settings)  # local | public
        self._public_scores = None

    # ------------------------------------------------------------------ who prunes
    def prunes(self, device: Device) -> bool:
        """False for devices that keep a forward-only trainer (``keep_forward_only``): dense, full rank."""
        return not (self.cfg.keep_forward_only and device.profile.trainer in FORWARD_ONLY_TRAINERS)

    def public_scores(self):
        """Head/channel scores of the dense base on the public split (computed once): the public masks' only
        input, the same function the devices run (pruning.importance.public_scores)."""
        if self._public_scores is None:
            from models.base_checkpoint import load_corpus

            self._public_scores = public_scores(base_dir(self.settings), load_corpus(self.settings),
                                                self.settings.data.seq_len, self.dims)
        return self._public_scores

    # ------------------------------------------------------------------ device state
    def structure_of(self, device: Device) -> Structure:
        return self.structures.get(device.index) or Structure.dense(self.dims)

    def bandit_of(self, device: Device) -> SmoothUCB:
        if device.index not in self.bandits:
            b = self.cfg.bandit
            self.bandits[device.index] = SmoothUCB(
                max_ratio=self.cfg.max_ratio, ranks=list(self.cfg.ranks), grid=b.grid, bandwidth=b.bandwidth,
                explore=b.explore, split_after=b.split_after, max_depth=b.max_depth, frontier=b.frontier)
        return self.bandits[device.index]

    # ------------------------------------------------------------------ pricing (priced model, pruned as it goes)
    def work_levels(self, work: Work, device: Device) -> list[float] | None:
        """The level of each local iteration: from the device's current structure (not yet replaced by this
        round's reply while the round is priced) up to the arm's ratio, by the trainer's own schedule."""
        if work.trainer != TRAINER:
            return None
        x = work.extra
        return step_levels(self.structure_of(device).level(self.dims), float(x["ratio"]), work.local_steps,
                           int(x["prune_every"]), float(x["sparsity_step"]))

    def priced_bytes(self, work: Work, device: Device) -> tuple[int, int]:
        """Down: the global adapter sliced to the device's structure and rank (+ its masks once it has them);
        up: its delta at the round's final structure, with the masks."""
        if work.trainer != TRAINER:
            return super().priced_bytes(work, device)
        levels = self.work_levels(work, device)
        down = self.pricer.adapter_bytes(levels[0], work.rank, with_structure=device.index in self.structures)
        return down, self.pricer.adapter_bytes(levels[-1], work.rank, with_structure=True)

    def training_memory(self, structure: Structure, rank: int) -> int:
        """Peak bytes of a round that starts at ``structure`` on the priced model (pruning only shrinks it)."""
        c = self.settings.client
        return self.pricer.memory(self.pricer.job(TRAINER, rank, c.batch_size, c.local_steps,
                                                  [structure.level(self.dims)]))

    def fits(self, device: Device, rank: int) -> bool:
        return self.training_memory(self.structure_of(device), rank) <= device.usable_memory_bytes

    # ------------------------------------------------------------------ arms
    def arm_for(self, device: Device, server_round: int) -> tuple[float, int] | None:
        """This round's (pruning ratio, rank) for the device, or None when no arm fits its memory."""
        key = (server_round, device.index)
        if key not in self._arms:
            self._arms[key] = self._choose(device, server_round)
        return self._arms[key]

    def _choose(self, device: Device, server_round: int) -> tuple[float, int] | None:
        cfg = self.cfg
        rng = np.random.default_rng(seeded(self.settings.seed, server_round, device.index, "arm"))
        feasible = lambda ratio, rank: self.fits(device, rank)  # noqa: E731
        if cfg.policy == "bandit":
            arm = self.bandit_of(device).choose(feasible)
        elif cfg.policy == "random":
            ranks = [r for r in cfg.ranks if feasible(0.0, r)]
            arm = (round(float(rng.uniform(0, cfg.max_ratio)), 4), int(rng.choice(ranks))) if ranks else None
        elif cfg.policy == "fixed":
            arm = (cfg.fixed_ratio, cfg.fixed_rank)
        else:  # class_ranks
            arm = (0.0, cfg.class_ranks[device.class_name])
        if arm is None or not feasible(*arm):
            return None
        return (arm[0] if cfg.prune else 0.0, int(arm[1]))

    # ------------------------------------------------------------------ per-device work
    def work_for(self, device: Device, server_round: int) -> Work:
        work = super().work_for(device, server_round)
        if not self.prunes(device):
            work.rank = self.max_rank  # its own trainer on the dense model, the global adapter at full rank
            return work
        arm = self.arm_for(device, server_round)
        ratio, rank = arm if arm is not None else (0.0, self.max_rank)
        work.trainer, work.rank = TRAINER, rank
        work.extra = {
            "ratio": float(ratio), "max_rank": self.max_rank, "alpha": float(self.settings.method.lora.alpha),
            "prune_every": self.cfg.prune_every, "sparsity_step": self.cfg.sparsity_step,
            "importance_ema": self.cfg.importance_ema, "head_rule": self.cfg.head_rule, "masks": self.masks,
        }
        return work

    def eval_work_for(self, device: Device, server_round: int) -> Work:
        """Federated evaluation scores the global adapter (full rank) on the device's test split."""
        work = super().work_for(device, server_round)
        work.trainer, work.rank = "lora_backprop", self.max_rank
        return work

    def memory_needed(self, device: Device, work: Work, trainable_params: int) -> int:
        if work.trainer != TRAINER:
            return super().memory_needed(device, work, trainable_params)
        if self.arm_for(device, work.server_round) is None:
            return math.inf  # no arm fits: the device is skipped (counted in fleet/skipped_memory)
        return super().memory_needed(device, work, trainable_params)

    def train_content(self, arrays: ArrayRecord, work: Work, device: Device) -> RecordDict:
        """Only the coordinates the device holds: the global adapter sliced to its structure and rank."""
        if work.trainer != TRAINER:
            return super().train_content(arrays, work, device)
        structure = self.structures.get(device.index)
        sub = slice_to(self._global, structure or Structure.dense(self.dims), self.dims, work.rank)
        work.extra["sliced"] = True
        return work_message_content(to_array_record(sub), work,
                                    structure.to_arrays() if structure is not None else None)

    # ------------------------------------------------------------------ replies
    def expected_shapes(self, structure: Structure, rank: int) -> dict[str, tuple]:
        out = {}
        for key, value in self._global.items():
            rows, cols = lora_index(key, structure, self.dims, rank)
            out[key] = (value.shape[0] if rows is None else len(rows), value.shape[1] if cols is None else len(cols))
        return out

    def parse_update(self, msg) -> Update:
        """Also checks the device's structure and rank (unreadable ones are rejected by the validator)."""
        update = super().parse_update(msg)
        work = self._ledger.work.get(update.device_index)
        if work is not None and work.trainer != TRAINER:  # a dense device: the global adapter's own shapes
            if update.structure:
                raise ValueError("a dense device sent pruning masks")
            update.metrics["rank"] = float(self.max_rank)
        else:  # the bandit's reward reads them: a pruning device's reply without them is malformed
            for key in LEARN_METRICS:
                if not np.isfinite(update.metrics[key]):
                    raise ValueError(f"metric {key} = {update.metrics[key]}")
        structure = Structure.from_arrays(update.structure, self.dims)  # raises ValueError/KeyError when malformed
        rank = int(update.metrics["rank"])
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} outside 1..{self.max_rank}")
        if work is not None and work.trainer == TRAINER:
            if rank != work.rank:
                raise ValueError(f"rank {rank} is not the rank {work.rank} it was sent")
            if self.masks == "public":  # the masks must be the ones public data gives; the server's own copy is used
                expected = public_structure(self.structure_of(self.devices[update.device_index]), self.public_scores(),
                                            self.dims, self.work_levels(work, self.devices[update.device_index]),
                                            self.cfg.head_rule)
                if any(not np.array_equal(a, b) for a, b in zip(structure.heads + structure.channels,
                                                                 expected.heads + expected.channels)):
                    raise ValueError("masks differ from the public ones (method.fedspine.masks=public)")
                update.structure = expected.to_arrays()
                before = self.structure_of(self.devices[update.device_index])
                update.metrics["sparsity_before"] = before.sparsity(self.dims, self.hidden)
                update.metrics["sparsity"] = expected.sparsity(self.dims, self.hidden)
        self._bytes_up[update.device_index] = msg.content[ARRAYS].count_bytes()
        return update

    def update_reference(self, update: Update) -> dict[str, np.ndarray]:
        """The shapes this device's delta must have: its kept heads/channels at its rank (validated centrally)."""
        work = self._ledger.work.get(update.device_index)
        if work is not None and work.trainer != TRAINER:
            return self._global
        shapes = self.expected_shapes(Structure.from_arrays(update.structure, self.dims), int(update.metrics["rank"]))
        return {k: np.empty(shape, dtype=self._global[k].dtype) for k, shape in shapes.items()}

    def sub_updates(self, updates: list[Update]) -> list[SubUpdate]:
        return [SubUpdate(u.delta, Structure.from_arrays(u.structure, self.dims), int(u.metrics["rank"]),
                          float(u.num_examples)) for u in updates]

    def full_coordinates(self, update: Update) -> dict[str, np.ndarray]:
        """The delta placed in full coordinates, zeros where the device holds nothing (the project's one mapping,
        pruning.structure.scatter_from): what user-level DP clips and noises."""
        shapes = {k: v.shape for k, v in self._global.items()}
        values, _ = scatter_from(update.delta, Structure.from_arrays(update.structure, self.dims), self.dims,
                                 int(update.metrics["rank"]), shapes)
        return values

    def aggregate_updates(self, server_round: int, updates: list[Update]) -> dict[str, np.ndarray]:
        shapes = {k: v.shape for k, v in self._global.items()}
        return aggregate_hetero(self.sub_updates(updates), shapes, self.dims)

    def learn_from(self, server_round: int, updates: list[Update]) -> None:
        subs = self.sub_updates(updates)
        self._round_metrics["fedspine/coverage"] = coverage(subs, {k: v.shape for k, v in self._global.items()},
                                                            self.dims)
        pruned = [(u, s) for u, s in zip(updates, subs) if self._ledger.work.get(u.device_index) is None
                  or self._ledger.work[u.device_index].trainer == TRAINER]
        if pruned:
            self._learn(server_round, [u for u, _ in pruned], [s for _, s in pruned])

    def _learn(self, server_round: int, updates: list[Update], subs: list[SubUpdate]) -> None:
        """Keep each device's new structure; score its arm; update its bandit. Under user-level DP the private
        terms (loss gain, update norm) were withheld on arrival: they count 0 (runconfig/combinations.py refuses
        a bandit that weights them)."""
        rows = []
        for u, sub in zip(updates, subs):
            t = self.reply_time(u, self._bytes_up.get(u.device_index, 0)).total_s  # before its structure changes
            before, after, target = u.metrics["sparsity_before"], u.metrics["sparsity"], self.cfg.target_sparsity
            progress = 1.0 if after >= target - 1e-6 else max(0.0, after - before) / max(target - before, 1e-6)
            start, end = u.metrics.get("loss_start"), u.metrics.get("loss_end")
            gain = (start - end) / max(start, 1e-9) if start is not None and end is not None else 0.0
            rows.append({"gain": gain, "progress": progress, "update": u.metrics.get("update_norm", 0.0), "time": t})
            self.structures[u.device_index] = sub.structure
        rewards = cohort_rewards(rows, self.cfg.reward)
        for u, row, r in zip(updates, rows, rewards):
            device = self.devices[u.device_index]
            arm = self.arm_for(device, server_round)
            if self.cfg.policy == "bandit" and arm is not None:
                self.bandit_of(device).update(arm, r)
            self.arm_log.append({"round": server_round, "device": device.index, "class": device.class_name,
                                 "ratio": arm[0] if arm else 0.0, "rank": int(u.metrics["rank"]),
                                 "sparsity": u.metrics["sparsity"], "reward": r, **row})
        m = self._round_metrics
        m["fedspine/reward_mean"] = float(np.mean(rewards))
        m["fedspine/cohort_sparsity"] = float(np.mean([u.metrics["sparsity"] for u in updates]))
        m["fedspine/cohort_rank"] = float(np.mean([u.metrics["rank"] for u in updates]))

    def aggregate_train(self, server_round: int, replies):
        self._round_metrics = {}
        arrays, metrics = super().aggregate_train(server_round, replies)
        m = dict(metrics or {})
        m.update(self._round_metrics)
        m.update(self.state_metrics())
        self._log_bandit_state(server_round)
        return arrays, MetricRecord(m)

    # ------------------------------------------------------------------ logging and checkpoints
    def state_metrics(self) -> dict[str, float]:
        """Fleet-level summaries of pruning and bandit state (MLflow metrics each round)."""
        m: dict[str, float] = {}
        sp = [s.sparsity(self.dims, self.hidden) for s in self.structures.values()]
        m["fedspine/fleet_mean_sparsity"] = float(np.sum(sp) / len(self.devices))
        if self.bandits:
            m["bandit/pulls_total"] = float(sum(b.t for b in self.bandits.values()))
            m["bandit/cells_mean"] = float(np.mean([len(b.cells) for b in self.bandits.values()]))
        for cls in sorted({d.class_name for d in self.devices}):
            members = [d for d in self.devices if d.class_name == cls]
            m[f"fedspine/{cls}/sparsity"] = float(np.mean([self.structure_of(d).sparsity(self.dims, self.hidden)
                                                           for d in members]))
            if not any(self.prunes(d) for d in members):  # dense devices train the global adapter at full rank
                m[f"fedspine/{cls}/rank"] = float(self.max_rank)
                continue
            rows = [r for r in self.arm_log if r["class"] == cls and r["round"] == self._last_round()]
            if rows:
                m[f"fedspine/{cls}/ratio"] = float(np.mean([r["ratio"] for r in rows]))
                m[f"fedspine/{cls}/rank"] = float(np.mean([r["rank"] for r in rows]))
        return m

    def _last_round(self) -> int:
        return self.arm_log[-1]["round"] if self.arm_log else 0

    def bandit_table(self) -> dict:
        """Per device: pulls and per-cell counts and smoothed estimates (the bandit's state, readable)."""
        out = {}
        for idx, b in sorted(self.bandits.items()):
            mu, n_s, _ = b.scores()
            out[str(idx)] = {"class": self.devices[idx].class_name, "t": b.t, "best_arm": list(b.best_arm()),
                             "cells": [{"arm": list(b.arm_of(c)), "count": c.count, "smoothed_count": float(n),
                                        "estimate": float(e)} for c, e, n in zip(b.cells, mu, n_s)]}
        return out

    def _log_bandit_state(self, server_round: int) -> None:
        if self.bandits:
            self.events.on_artifact(self.bandit_table(), f"fedspine/bandit_round{server_round:03d}.json")

    def get_state(self) -> dict:
        """JSON-serialisable strategy state: device structures, bandits and the arm log (for checkpoints)."""
        return {
            **super().get_state(),
            "structures": {str(i): {k: v.tolist() for k, v in s.to_arrays().items()}
                           for i, s in self.structures.items()},
            "bandits": {str(i): b.get_state() for i, b in self.bandits.items()},
            "arm_log": list(self.arm_log),
        }

    def set_state(self, state: dict) -> None:
        self.structures = {int(i): Structure.from_arrays({k: np.asarray(v) for k, v in s.items()}, self.dims)
                           for i, s in state["structures"].items()}
        self.bandits = {}
        for i, b in state["bandits"].items():
            self.bandit_of(self.devices[int(i)]).set_state(b)
        self.arm_log = list(state["arm_log"])
        super().set_state(state)
