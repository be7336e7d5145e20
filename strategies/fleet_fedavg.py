"""FedAvg over LoRA adapters for a heterogeneous fleet, on Flower's Message API.

Differs from Flower's built-in ``FedAvg`` (``flwr.serverapp.strategy.FedAvg``) where a fleet needs it:

* **Devices, not nodes.** Node ids are random in simulation, so a ``query`` round asks each node which
  device of the fleet it is; cohorts are drawn from devices that are online this round (per-class
  availability, seeded) and whose memory fits the work (work that does not fit is never sent; counted).
* **Per-device work.** Each device gets its own ConfigRecord (trainer, rank, seed, ...): subclasses change
  :meth:`work_for` and :meth:`aggregate_updates` (FedSpine's ranks and pruning, DP clipping and noise).
* **Deltas and a simulated clock.** Replies carry adapter deltas; the round's simulated duration is its
  slowest reply's device time (compute scaled to the device + bytes over its links).
* **Observers.** ``start`` mirrors ``Strategy.start``'s round loop and hands every round's metrics to
  observers (MLflow, the progress bar), as Flower's own examples do by overriding ``start``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
import logging
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fleet.clock import DeviceTime, device_time, round_time
from fleet.devices import Device
from fleet.memory import ModelShape, training_bytes
from protocol.messages import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    Update,
    Work,
    from_array_record,
    to_array_record,
    work_message_content,
)
from runconfig.schema import Settings
from strategies.aggregation import apply_delta, weighted_mean
from zeroqat import upload

logger = logging.getLogger(__name__)

FORWARD_ONLY_TRAINERS = {"zeroqat"}


class RoundObserver(Protocol):
    def on_round(self, server_round: int, metrics: dict[str, float]) -> None: ...


def seeded(*parts) -> int:
    """A 32-bit seed from any parts, stable across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


@dataclass
class RoundLedger:
    """What happened to the fleet in one round (before aggregation)."""

    sent: dict[int, Device] = field(default_factory=dict)  # node id -> device
    offline: int = 0
    skipped_memory: int = 0
    bytes_down_each: int = 0
    bytes_down: dict[int, int] = field(default_factory=dict)  # device index -> bytes of its train message


class FleetFedAvg(Strategy):
    def __init__(
        self,
        settings: Settings,
        devices: list[Device],
        model_shape: ModelShape,
        concurrency: int,
        observers: Iterable[RoundObserver] = (),
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.model_shape = model_shape
        self.concurrency = max(1, concurrency)
        self.observers = list(observers)
        self.node_of_device: dict[int, int] = {}
        self.sim_time_s = 0.0
        self._ledger = RoundLedger()
        self._global: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ fleet
    def discover(self, grid: Grid, timeout: float) -> None:
        """Ask every connected node which device it is (one ``query`` message each)."""
        deadline = time.monotonic() + timeout
        while len(nodes := list(grid.get_node_ids())) < len(self.devices) and time.monotonic() < deadline:
            time.sleep(0.5)
        messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                logger.warning("node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            index = int(reply.content[METRICS]["device-index"])
            if 0 <= index < len(self.devices):
                self.node_of_device[index] = reply.metadata.src_node_id
        if not self.node_of_device:
            raise RuntimeError("no device of the fleet answered; is the ClientApp running?")
        logger.info("fleet: %d of %d devices connected", len(self.node_of_device), len(self.devices))

    def trainer_for(self, device: Device) -> str:
        return self.settings.client.trainer or device.profile.trainer

    def rank_for(self, device: Device, server_round: int) -> int:
        return self.settings.method.lora.rank

    def work_for(self, device: Device, server_round: int) -> Work:
        c = self.settings.client
        return Work(
            server_round=server_round,
            device_index=device.index,
            trainer=self.trainer_for(device),
            local_steps=c.local_steps,
            batch_size=c.batch_size,
            lr=c.lr,
            rank=self.rank_for(device, server_round),
            seed=seeded(self.settings.seed, server_round, device.index),
        )

    def train_content(self, arrays: ArrayRecord, work: Work, device: Device) -> RecordDict:
        """A train message's content (hook: FedSpine adds the device's kept-structure masks)."""
        return work_message_content(arrays, work)

    def eval_work_for(self, device: Device, server_round: int) -> Work:
        """The Work of an evaluate message (hook: FedSpine evaluates the global adapter at its full rank)."""
        return self.work_for(device, server_round)

    def memory_needed(self, device: Device, work: Work, trainable_params: int) -> int:
        return training_bytes(
            self.model_shape,
            trainable_params,
            work.batch_size,
            self.settings.data.seq_len,
            self.settings.model.param_bytes,
            backprop=work.trainer not in FORWARD_ONLY_TRAINERS,
        )

    def select(self, server_round: int, size: int, purpose: str, trainable_params: int) -> tuple[list[Device], RoundLedger]:
        """Seeded cohort: online devices (per-class availability) whose memory fits the work."""
        rng = np.random.default_rng(seeded(self.settings.seed, server_round, purpose))
        ledger = RoundLedger()
        candidates = []
        for device in self.devices:
            if device.index not in self.node_of_device or rng.random() >= device.profile.availability:
                ledger.offline += 1
                continue
            work = self.work_for(device, server_round)
            if self.memory_needed(device, work, trainable_params) > device.usable_memory_bytes:
                ledger.skipped_memory += 1
                continue
            candidates.append(device)
        chosen = rng.choice(len(candidates), size=min(size, len(candidates)), replace=False) if candidates else []
        return [candidates[i] for i in sorted(chosen)], ledger

    # ------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = from_array_record(arrays)
        trainable = sum(v.size for v in self._global.values())
        cohort, ledger = self.select(server_round, self.settings.federation.cohort_size, "train", trainable)
        ledger.bytes_down_each = arrays.count_bytes()
        messages = []
        for device in cohort:
            node = self.node_of_device[device.index]
            ledger.sent[node] = device
            content = self.train_content(arrays, self.work_for(device, server_round), device)
            ledger.bytes_down[device.index] = content[ARRAYS].count_bytes()
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._ledger = ledger
        return messages

    def valid_updates(self, server_round: int, replies: Iterable[Message]) -> tuple[list[tuple[Update, int]], int]:
        """Replies that carry a usable update (with their upload size), and how many failed."""
        good, failed = [], 0
        for msg in replies:
            if msg.has_error():
                failed += 1
                logger.warning("round %d: a device failed: %s", server_round, msg.error.reason)
                continue
            update = self.expand_update(Update.from_message(msg))
            ok_shapes = update.delta.keys() == self._global.keys() and all(
                update.delta[k].shape == self._global[k].shape for k in self._global
            )
            if not ok_shapes or update.num_examples <= 0:
                failed += 1
                logger.warning("round %d: device %d sent a malformed update", server_round, update.device_index)
                continue
            good.append((update, msg.content[ARRAYS].count_bytes()))
        return good, failed

    def expand_update(self, update: Update) -> Update:
        """A ZO device's seed-only upload (seeds, projected gradients) replayed into the adapter delta it stands for."""
        if upload.is_seed_upload(update.delta):
            z = self.settings.zeroqat
            update.delta = upload.replay_delta(self._global, update.delta, z.lr, z.lr_schedule)
        return update

    def class_metrics(self, good: list[tuple[Update, int]]) -> dict[str, float]:
        """Per device class: train loss (example-weighted), replies and upload bytes (e.g. phones vs Jetsons)."""
        out: dict[str, float] = {}
        for name in sorted({self.devices[u.device_index].class_name for u, _ in good}):
            rows = [(u, b) for u, b in good if self.devices[u.device_index].class_name == name]
            weights = [u.num_examples for u, _ in rows]
            out[f"train/loss/{name}"] = float(np.average([u.metrics["train_loss"] for u, _ in rows], weights=weights))
            out[f"fleet/replies/{name}"] = len(rows)
            out[f"comm/bytes_up/{name}"] = sum(b for _, b in rows)
        return out

    def aggregate_updates(self, server_round: int, updates: list[Update]) -> dict[str, np.ndarray]:
        """The global delta of this round (example-weighted FedAvg)."""
        return weighted_mean([u.delta for u in updates], [u.num_examples for u in updates])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good, failed = self.valid_updates(server_round, replies)
        ledger = self._ledger
        no_reply = len(ledger.sent) - len(replies)  # lost devices (a killed SuperNode): the round went on without them
        if no_reply:
            logger.warning("round %d: %d device(s) sent no reply within the round timeout", server_round, no_reply)
        metrics = {
            "fleet/replies": len(good),
            "fleet/failures": failed,
            "fleet/no_reply": no_reply,
            "fleet/offline": ledger.offline,
            "fleet/skipped_memory": ledger.skipped_memory,
        }
        if not good:
            return None, MetricRecord(metrics)
        updates = [u for u, _ in good]
        new_global = apply_delta(self._global, self.aggregate_updates(server_round, updates))
        times: list[DeviceTime] = []
        for update, bytes_up in good:
            device = self.devices[update.device_index]
            times.append(
                device_time(device, update.metrics["compute_s"], update.metrics["host_gflops"],
                            self.settings.fleet.compute_efficiency,
                            ledger.bytes_down.get(update.device_index, ledger.bytes_down_each), bytes_up)
            )
        sim_round = round_time(times)
        self.sim_time_s += sim_round
        weights = np.array([u.num_examples for u in updates], dtype=float)
        metrics.update({
            "train/loss": float(np.average([u.metrics["train_loss"] for u in updates], weights=weights)),
            "clock/sim_round_s": sim_round,
            "clock/sim_time_s": self.sim_time_s,
            "comm/bytes_down": sum(ledger.bytes_down.values()) if ledger.bytes_down
            else ledger.bytes_down_each * len(ledger.sent),
            "comm/bytes_up": sum(b for _, b in good),
            "timing/client_compute_s": sum(u.metrics["compute_s"] for u in updates),
            "memory/peak_rss_mb": max(u.metrics.get("peak_rss_mb", 0.0) for u in updates),
            **self.class_metrics(good),
        })
        for trainer in {self.trainer_for(self.devices[u.device_index]) for u in updates}:
            mine = [u for u in updates if self.trainer_for(self.devices[u.device_index]) == trainer]
            metrics[f"memory/peak_rss_mb.{trainer}"] = max(u.metrics.get("peak_rss_mb", 0.0) for u in mine)
            metrics[f"train/loss.{trainer}"] = float(np.mean([u.metrics["train_loss"] for u in mine]))
        return to_array_record(new_global), MetricRecord(metrics)

    # ----------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        size = self.settings.federation.eval_cohort_size
        if size == 0:
            return []
        trainable = sum(v.numpy().size for v in arrays.values())
        cohort, _ = self.select(server_round, size, "evaluate", trainable)
        messages = []
        for device in cohort:
            work = self.eval_work_for(device, server_round)
            content = work_message_content(arrays, work)
            messages.append(Message(content, dst_node_id=self.node_of_device[device.index],
                                    message_type=MessageType.EVALUATE))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rows = [m.content[METRICS] for m in replies if not m.has_error()]
        tokens = np.array([r[NUM_EXAMPLES] for r in rows], dtype=float)
        if not rows or tokens.sum() == 0:
            return None
        loss = float(np.average([r["eval_loss"] for r in rows], weights=tokens))
        return MetricRecord({
            "eval/fed_loss": loss,
            "eval/fed_ppl": float(np.exp(min(loss, 50.0))),
            "eval/fed_accuracy": float(np.average([r["eval_accuracy"] for r in rows], weights=tokens)),
            "timing/client_eval_s": float(sum(r["compute_s"] for r in rows)),
        })

    def summary(self) -> None:
        logger.info("FleetFedAvg: %d devices, cohort %d, %d rounds", len(self.devices),
            self.settings.federation.cohort_size, self.settings.rounds)

    # ------------------------------------------------------------ round loop
    def _notify(self, server_round: int, metrics: dict[str, float]) -> None:
        for observer in self.observers:
            observer.on_round(server_round, metrics)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        result = Result(arrays=initial_arrays)
        self.discover(grid, timeout)
        if evaluate_fn:
            initial = evaluate_fn(0, initial_arrays)
            if initial is not None:
                result.evaluate_metrics_serverapp[0] = initial
                self._notify(0, dict(initial))
        arrays = initial_arrays
        for rnd in range(1, num_rounds + 1):
            t0 = time.perf_counter()
            replies = grid.send_and_receive(self.configure_train(rnd, arrays, train_config, grid), timeout=timeout)
            new_arrays, train_metrics = self.aggregate_train(rnd, replies)
            t1 = time.perf_counter()
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            metrics: dict[str, float] = dict(train_metrics or {})
            if train_metrics is not None:
                result.train_metrics_clientapp[rnd] = train_metrics
            eval_replies = grid.send_and_receive(
                self.configure_evaluate(rnd, arrays, evaluate_config, grid), timeout=timeout
            )
            fed_eval = self.aggregate_evaluate(rnd, eval_replies)
            t2 = time.perf_counter()
            if fed_eval is not None:
                result.evaluate_metrics_clientapp[rnd] = fed_eval
                metrics.update(fed_eval)
            if evaluate_fn:
                central = evaluate_fn(rnd, arrays)
                if central is not None:
                    result.evaluate_metrics_serverapp[rnd] = central
                    metrics.update(central)
            t3 = time.perf_counter()
            client_s = metrics.get("timing/client_compute_s", 0.0) + metrics.get("timing/client_eval_s", 0.0)
            metrics.update({
                "timing/round_wall_s": t3 - t0,
                "timing/federated_wall_s": t2 - t0,
                "timing/train_wall_s": t1 - t0,
                "timing/central_eval_s": t3 - t2,
                # share of the federated phases' wall time not spent computing on clients (all workers busy = 0)
                "timing/overhead_share": max(0.0, 1.0 - client_s / (self.concurrency * max(t2 - t0, 1e-9))),
            })
            self._notify(rnd, metrics)
        return result
