"""FedAvg over LoRA adapters for a heterogeneous fleet, on Flower's Message API.

Differs from Flower's built-in ``FedAvg`` (``flwr.serverapp.strategy.FedAvg``) where a fleet needs it:

* **Devices, not nodes.** Node ids are random in simulation, so a ``query`` round asks each node which
  device of the fleet it is; cohorts are drawn from devices that are online this round (per-class
  availability, seeded) and whose memory fits the work (work that does not fit is never sent; counted).
* **Per-device work.** Each device gets its own ConfigRecord (trainer, rank, seed, ...): subclasses change
  :meth:`work_for` and :meth:`aggregate_updates` (FedSpine's ranks and pruning; DP's clipping and noise are
  the privacy layer's).
* **Deltas and a simulated clock.** Replies carry adapter deltas; the round's simulated duration is its
  slowest reply's device time (compute scaled to the device + bytes over its links).
* **Composed parts.** Selection (strategies/selection.py), the privacy layer (strategies/privacy_layer.py; DP
  is put on by privacy/dp_fedavg.py:with_user_dp), reply validation (strategies/update_validation.py), pricing
  (fleet/pricing.py), the fault log and run counters (strategies/round_state.py) and events to observers
  (strategies/events.py) are objects; ``start`` runs strategies/round_loop.py, Flower's loop plus discovery,
  retries and resume.
* **Faults** (docs/faults.md). Devices fail mid-round (per-class ``failure_rate``) or reply after the round's
  simulated deadline; every reply is validated before aggregation (strategies/update_validation.py); a round
  with too few replies is retried or skipped; ``aggregation.rule`` picks a robust rule. After every round,
  ``round_end_hooks`` see the final state (the checkpointer); ``get_state``/``set_state`` carry what a
  subclass must keep across a resume (bandit statistics): extend both with ``super()``.

Size (~410 lines): what is left here are the hooks FedSpine and DP-DyLoRA override (work, pricing, validation
references, aggregation), kept in one class so that those strategies read as overrides of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fleet.arch import ArchShape
from fleet.availability import failing_devices, on_time, round_duration, selection_size
from fleet.clock import DeviceTime
from fleet.devices import Device
from fleet.pricing import FORWARD_ONLY_TRAINERS, Pricer
from protocol.messages import (
    ARRAYS,
    Update,
    Work,
    from_array_record,
    to_array_record,
    work_message_content,
)
from runconfig.schema import Settings
from strategies import robust_aggregation, round_loop
from strategies.aggregation import apply_delta
from strategies.discovery import discover_devices
from strategies.events import Events, RunObserver
from strategies.privacy_layer import NoPrivacy, PrivacyLayer
from strategies.reply_metrics import federated_eval_metrics, reply_metrics
from strategies.round_state import FaultLog, RoundLedger, RunCounters
from strategies.selection import Selection, UniformSelection, seeded
from strategies.update_validation import (
    ReplyRejected,
    RoundLimits,
    UpdateValidator,
    default_norm_bound,
    delta_norm,
)
from zeroqat import upload
from zeroqat.spsa import step_seeds

logger = logging.getLogger(__name__)


__all__ = ["FleetFedAvg", "RoundLedger", "seeded"]


class FleetFedAvg(Strategy):
    def __init__(
        self,
        settings: Settings,
        devices: list[Device],
        model_shape: ArchShape,
        concurrency: int,
        observers: Iterable[RunObserver] = (),
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.model_shape = model_shape  # the trained model's; self.pricer prices the work as cost.priced_as
        self.pricer = Pricer(settings, model_shape)
        self.concurrency = max(1, concurrency)
        self.events = Events(observers)
        self.node_of_device: dict[int, int] = {}
        self._ledger = RoundLedger()
        self._global: dict[str, np.ndarray] = {}
        self.validator = UpdateValidator(settings.validation)
        self.selection: Selection = UniformSelection(devices, settings.seed)  # evaluation cohorts
        self.train_selection: Selection = self.selection  # training cohorts (user-level DP: Poisson sampling)
        self.privacy: PrivacyLayer = NoPrivacy()  # privacy/dp_fedavg.py:with_user_dp replaces it
        self.counters = RunCounters()  # simulated clock, model version, recent delta norms
        self.faults = FaultLog()
        self.attempt = 0  # retry of the current round (0: first try)
        self.round_end_hooks: list[Callable[[int, dict[str, np.ndarray], dict[str, float]], None]] = []
        # num-examples each device may claim (its aggregation weight): the server's count of its data windows
        # (set by server.federation in a simulation); validation.max_examples caps it too
        self.known_examples: dict[int, int] = {}

    @property
    def observers(self) -> list[RunObserver]:
        return self.events.observers

    @property
    def fault_log(self) -> list[dict]:
        return self.faults.events

    @property
    def ledger(self) -> RoundLedger:
        """The current round's (attempt's) ledger: who was sent which work, validation of the replies."""
        return self._ledger

    # ------------------------------------------------------------------ fleet
    def discover(self, grid: Grid, timeout: float) -> None:
        """Ask every connected node which device it is (strategies/discovery.py)."""
        self.node_of_device = discover_devices(grid, len(self.devices), self.settings.federation.connect_timeout_s,
                                               timeout)

    def trainer_for(self, device: Device) -> str:
        return self.privacy.trainer() or self.settings.client.trainer or device.profile.trainer

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

    def device_work(self, device: Device, server_round: int) -> Work:
        """The work a device is sent: the strategy's :meth:`work_for`, then what the privacy layer asks."""
        return self.privacy.decorate(self.work_for(device, server_round))

    def train_content(self, arrays: ArrayRecord, work: Work, device: Device) -> RecordDict:
        """A train message's content (hook: FedSpine adds the device's kept-structure masks)."""
        return work_message_content(arrays, work)

    def eval_work_for(self, device: Device, server_round: int) -> Work:
        """The Work of an evaluate message (hook: FedSpine evaluates the global adapter at its full rank)."""
        return self.device_work(device, server_round)

    # ------------------------------------------------------------------ pricing (fleet/pricing.py)
    def work_levels(self, work: Work, device: Device) -> list[float] | None:
        """Pruning level of each local iteration (None: dense throughout; FedSpine prunes as it goes)."""
        return None

    def priced_job(self, work: Work, device: Device):
        return self.pricer.job(work.trainer, work.rank, work.batch_size, work.local_steps,
                               self.work_levels(work, device))

    def priced_bytes(self, work: Work, device: Device) -> tuple[int, int]:
        """(down, up) at the priced model: the adapter at the work's rank each way (DP-DyLoRA's round rank; a
        seed upload is counted as sent)."""
        full = self.pricer.adapter_bytes(0.0, work.rank)
        return full, full

    def reply_time(self, update: Update, bytes_up: int) -> DeviceTime:
        """The simulated device time of an accepted reply (``cost.clock``)."""
        device = self.devices[update.device_index]
        work = self._ledger.work[update.device_index]
        down, up = self.priced_bytes(work, device)
        if work.trainer in FORWARD_ONLY_TRAINERS and self.settings.zeroqat.seed_upload:
            up = bytes_up  # (seeds, projected gradients): the same on any model
        sent_down = self._ledger.bytes_down.get(update.device_index, self._ledger.bytes_down_each)
        stall = update.metrics.get("stall_s", 0.0)
        return self.pricer.device_time(device, work.trainer, self.priced_job(work, device), (down, up),
                                       (update.metrics["compute_s"], update.metrics["host_gflops"]),
                                       (sent_down, bytes_up), stall if np.isfinite(stall) and stall > 0 else 0.0)

    def memory_needed(self, device: Device, work: Work, trainable_params: int) -> int:
        """Peak training memory of the work on the priced model (work that does not fit is never sent)."""
        return self.pricer.memory(self.priced_job(work, device))

    def select(self, server_round: int, size: int, purpose: str, trainable_params: int) -> tuple[list[Device], RoundLedger]:
        """The cohort of ``purpose`` ("train": ``train_selection``, else ``selection``) among the connected devices
        whose memory fits the work (a retry of the round, ``self.attempt`` > 0, draws afresh)."""
        def fits(device: Device) -> bool:
            work = self.device_work(device, server_round)
            return self.memory_needed(device, work, trainable_params) <= device.usable_memory_bytes

        selection = self.train_selection if purpose == "train" else self.selection
        drawn = selection.draw(server_round, size, purpose, self.attempt, self.node_of_device, fits)
        return drawn.cohort, RoundLedger(offline=drawn.offline, skipped_memory=drawn.skipped_memory)

    # ------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = from_array_record(arrays)
        trainable = sum(v.size for v in self._global.values())
        fed = self.settings.federation
        size = selection_size(fed.cohort_size, fed.over_selection)
        cohort, ledger = self.select(server_round, size, "train", trainable)
        ledger.bytes_down_each = arrays.count_bytes()
        # devices that will fail mid-training are not run: their reply would never arrive
        ledger.failing = failing_devices(cohort, seeded(self.settings.seed, server_round, self.attempt, "failure"))
        messages = []
        for device in cohort:
            if device.index in ledger.failing:
                continue
            node = self.node_of_device[device.index]
            ledger.sent[node] = device
            work = self.device_work(device, server_round)
            ledger.work[device.index] = work
            work.model_version = self.counters.model_version
            content = self.train_content(arrays, work, device)
            ledger.bytes_down[device.index] = content[ARRAYS].count_bytes()
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._ledger = ledger
        return messages

    def valid_updates(self, server_round: int, replies: Iterable[Message]) -> tuple[list[tuple[Update, int]], int]:
        """Replies that pass validation (with their upload size, by device index), and how many failed.

        Rejections (with device and reason) are kept in the round's ledger (``checked``) and counted in MLflow.
        """
        checked = self.validator.check(server_round, self.counters.model_version, self.update_reference, replies,
                                       {node: d.index for node, d in self._ledger.sent.items()}, self.parse_update,
                                       self.round_limits())
        checked.accepted = self.privacy.released(checked.accepted)  # under DP: private fields dropped once checked
        self._ledger.checked = checked
        return checked.accepted, len(checked.failed)

    def parse_update(self, msg: Message) -> Update:
        """A reply as an Update, cheaply (compressed uploads are expanded by :meth:`expand_update`, later)."""
        return Update.from_message(msg)

    def max_examples(self, device_index: int) -> int | None:
        """The most ``num-examples`` a device may claim: what the server knows it holds, and the configured cap."""
        caps = [c for c in (self.known_examples.get(device_index), self.settings.validation.max_examples)
                if c is not None]
        return min(caps) if caps else None

    def norm_floor(self) -> float:
        """A delta norm honest devices reach whatever the adapter (client-side DP noise)."""
        return self.privacy.norm_floor(self._global)

    def round_limits(self) -> RoundLimits:
        """Weight caps, the default absolute norm bound and the expansion hook of this round's validation."""
        bound = default_norm_bound(self.settings.validation.norm_bound_factor, delta_norm(self._global),
                                   self.counters.norm_history, self.norm_floor())
        self._ledger.norm_bound = bound
        return RoundLimits(max_examples=self.max_examples, expand=self.expand_update, norm_bound=bound)

    def update_reference(self, update: Update) -> dict[str, np.ndarray]:
        """Names, shapes and dtype a device's delta must have: the global adapter's (strategies whose devices
        train other ranks return the device's own)."""
        return self._global

    def expand_update(self, update: Update) -> Update:
        """A ZO device's seed-only upload (seeds, projected gradients) replayed into the adapter delta it stands
        for; only from a device that was asked for one, and only after its counts, seeds and gradients match
        its work (zeroqat.upload.check_upload): the replay's cost is bounded by the work, not by the reply."""
        if upload.is_seed_upload(update.delta):
            z = self.settings.zeroqat
            work = self._ledger.work.get(update.device_index)
            if work is None or work.trainer not in FORWARD_ONLY_TRAINERS or not z.seed_upload:
                raise ReplyRejected("seed_upload", "a seed upload from a device that was not asked for one")
            upload.check_upload(update.delta, step_seeds(work.seed, work.local_steps, z.perturbations), z.grad_clip)
            update.delta = upload.replay_delta(self._global, update.delta, z.lr, z.lr_schedule)
        return update

    def full_coordinates(self, update: Update) -> dict[str, np.ndarray]:
        """The update's delta in the global adapter's coordinates (strategies whose devices hold only part of
        the adapter place it there, zeros elsewhere): what user-level DP clips and noises."""
        return update.delta

    def learn_from(self, server_round: int, updates: list[Update]) -> None:
        """After a round's aggregation: what a strategy keeps from the replies (FedSpine: structures, bandits)."""

    def aggregate_updates(self, server_round: int, updates: list[Update]) -> dict[str, np.ndarray]:
        """The global delta of this round (example-weighted FedAvg, or ``aggregation.rule``'s robust rule)."""
        return robust_aggregation.aggregate(self.settings.aggregation, [u.delta for u in updates],
                                            [u.num_examples for u in updates])

    def round_delta(self, server_round: int, updates: list[Update]) -> dict[str, np.ndarray]:
        """The round's global delta: :meth:`aggregate_updates`, or the privacy layer's mechanism."""
        return self.privacy.round_delta(server_round, updates, self.aggregate_updates)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self._aggregate_replies(server_round, list(replies))
        metrics.update(self.privacy.round_metrics([u for u, _ in self._ledger.checked.accepted]))
        self.privacy.after_round()
        return arrays, MetricRecord(metrics)

    def _aggregate_replies(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, dict]:
        good, failed = self.valid_updates(server_round, replies)
        ledger = self._ledger
        fed = self.settings.federation
        no_reply = len(ledger.sent) - len(replies)  # lost devices (a killed SuperNode): the round went on without them
        if no_reply:
            logger.warning("round %d: %d device(s) sent no reply within the round timeout", server_round, no_reply)
        timed = []
        for update, bytes_up in good:
            t = self.reply_time(update, bytes_up)
            timed.append(((update, bytes_up, t), t.total_s))
        kept, late, surplus = on_time(timed, fed.deadline_s, fed.cohort_size if fed.over_selection > 0 else None)
        for update, _, t in late:
            logger.warning("round %d: device %d is late (%.1f s > deadline %s s)", server_round,
                           update.device_index, t.total_s, fed.deadline_s)
        failures = failed + len(ledger.failing)
        self.faults.record_round(server_round, self.attempt, ledger, late)
        sim_round = round_duration([t.total_s for _, _, t in kept], fed.deadline_s, failures + len(late) + no_reply)
        self.counters.sim_time_s += sim_round
        slowest = max((t for _, _, t in kept), key=lambda t: t.total_s, default=None)
        metrics = {
            "fleet/replies": len(kept),
            "fleet/offline": ledger.offline,
            "fleet/skipped_memory": ledger.skipped_memory,
            **ledger.checked.counts(),
            "fleet/failures": failures,
            "fleet/no_reply": no_reply,
            "fleet/late": len(late),
            "fleet/surplus": len(surplus),
            "clock/sim_round_s": sim_round,
            "clock/sim_time_s": self.counters.sim_time_s,
            # the reply that set the round's length: its compute and its transfers (cost.clock, cost.priced_as)
            "clock/round_compute_s": slowest.compute_s if slowest else 0.0,
            "clock/round_transfer_s": slowest.download_s + slowest.upload_s if slowest else 0.0,
            "cost/bytes_up": sum(t.bytes_up for _, _, t in kept),
            "cost/bytes_down": sum(t.bytes_down for _, _, t in kept),
            # what was sent (devices that fail mid-training downloaded their work too)
            "comm/bytes_down": sum(ledger.bytes_down.values()) + ledger.bytes_down_each * len(ledger.failing),
            "comm/bytes_up": sum(b for _, b in good),
        }
        if len(kept) < max(1, fed.min_replies):
            logger.warning("round %d: %d usable replies, fewer than federation.min_replies=%d", server_round,
                           len(kept), fed.min_replies)
            if self.privacy.releases_without_replies():
                # user-level DP: the mechanism still releases (0 + noise) / qN, as its analysis assumes
                return to_array_record(apply_delta(self._global, self.round_delta(server_round, []))), metrics
            return None, metrics
        updates = [u for u, _, _ in kept]
        new_global = apply_delta(self._global, self.round_delta(server_round, updates))
        norms = [delta_norm(u.delta) for u in updates]
        c = self.counters
        c.norm_history = (c.norm_history + [float(np.median(norms))])[-5:]
        if ledger.norm_bound is not None:  # how far honest deltas stay below the default bound (docs/faults.md)
            metrics["validation/norm_bound"] = ledger.norm_bound
            metrics["validation/update_norm_max"] = max(norms)
        self.learn_from(server_round, updates)
        c.model_version += 1
        metrics.update(reply_metrics(updates, [(u, b) for u, b, _ in kept], self.devices, self.trainer_for))
        return to_array_record(new_global), metrics

    def train_round(self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord | None,
                    timeout: float) -> tuple[ArrayRecord | None, dict[str, float]]:
        """One round's training with retries (strategies/round_loop.py)."""
        return round_loop.train_round(self, grid, server_round, arrays, config or ConfigRecord(), timeout)

    # ------------------------------------------------------------- resume
    def get_state(self) -> dict:
        """What the strategy must carry across a resume (checkpointed after every round): the counters, the
        fault log and the privacy layer's state. Subclasses add their own keys (bandit statistics) with
        ``{**super().get_state(), ...}``."""
        return {**self.counters.get_state(), **self.faults.get_state(), **self.privacy.get_state()}

    def set_state(self, state: dict) -> None:
        self.counters.set_state(state)
        self.faults.set_state(state)
        self.privacy.set_state(state)

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
        return federated_eval_metrics(replies)

    def summary(self) -> None:
        logger.info("FleetFedAvg: %d devices, cohort %d, %d rounds", len(self.devices),
            self.settings.federation.cohort_size, self.settings.rounds)
        self.privacy.summary()

    # ------------------------------------------------------------ round loop
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        first_round: int = 1,
    ) -> Result:
        """Flower's ``Strategy.start`` signature, run by strategies/round_loop.py (``first_round`` > 1 resumes)."""
        return round_loop.run_rounds(self, grid, initial_arrays, num_rounds, timeout, train_config,
                                     evaluate_config, evaluate_fn, first_round)
