"""User-level DP-FedAvg (McMahan et al. 2018) as a mixin over any FleetFedAvg strategy.

``with_user_dp(StrategyClass)`` returns a subclass that changes exactly what DP needs:

* **cohort**: Poisson sampling of the whole population at q = cohort_size / N (or exactly cohort_size, fixed),
  from the DP generator; devices that then turn out offline or too small drop out (a data-independent thinning,
  so accounting at q stays an upper bound);
* **aggregation**: equal weights, each whole update clipped to C, N(0, (sigma C)^2) on the sum, divided by the
  expected cohort q N (privacy.mechanism.dp_mean); a round with no valid reply still releases noise;
* **accounting**: one accountant step per round (Opacus RDP/PRV), ``privacy/epsilon`` after every round,
  training stops (no more cohorts) before the budget would be exceeded, state in ``get_state``/``set_state``
  and written each round (``privacy/accountant.json`` artifact through observers that store artifacts);
* **record-level DP-SGD** (optional): tells clients to train with Opacus, composes each device's reported
  steps in its own accountant on the server, logged as ``privacy/record_epsilon_max`` (separate guarantee).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fleet.devices import Device
from privacy.mechanism import dp_mean
from privacy.noise import noise_source
from privacy.plan import resolve_plan
from privacy.sampling import fixed_cohort, poisson_cohort
from protocol.messages import Update, Work, to_array_record, withhold_private
from strategies.aggregation import apply_delta
from strategies.fleet_fedavg import FleetFedAvg, RoundLedger, seeded

logger = logging.getLogger(__name__)

RECORD_TRAINER = "lora_dpsgd"


class UserLevelDP:
    """Mixin: put it before a FleetFedAvg subclass (``with_user_dp`` does)."""

    def __init__(self, settings, *args, **kwargs) -> None:
        super().__init__(settings, *args, **kwargs)
        p = settings.privacy
        self.privacy = p
        self.privacy_plan = resolve_plan(settings)
        self.privacy_budget = self.privacy_plan.new_budget(p.accountant, p.sampling)
        self._dp_noise = noise_source(p.rng, seeded(settings.seed, "dp-noise"))
        self._dp_sampler = noise_source(p.rng, seeded(settings.seed, "dp-sampling"))
        self._dp_sent = 0
        self._dp_exhausted = False
        self._record_accountants: dict[int, object] = {}
        self._record_delta: dict[int, float] = {}

    # ------------------------------------------------------------------ cohort
    def select(self, server_round: int, size: int, purpose: str, trainable_params: int):
        if purpose != "train":
            return super().select(server_round, size, purpose, trainable_params)
        plan, ledger = self.privacy_plan, RoundLedger()
        if not self.privacy_budget.allows_another_round():
            self._dp_exhausted = True
            return [], ledger
        self._dp_exhausted = False
        if self.privacy.sampling == "poisson":
            sampled = poisson_cohort(self.devices, plan.sample_rate, self._dp_sampler)
        else:
            sampled = fixed_cohort(self.devices, plan.expected_cohort, self._dp_sampler)
        self.privacy_budget.step()  # the sampling happened: this round counts whatever replies
        online_rng = np.random.default_rng(seeded(self.settings.seed, server_round, "online"))
        cohort = []
        for device in sampled:
            if device.index not in self.node_of_device or online_rng.random() >= device.profile.availability:
                ledger.offline += 1
            elif self.memory_needed(device, self.work_for(device, server_round), trainable_params) > device.usable_memory_bytes:
                ledger.skipped_memory += 1
            else:
                cohort.append(device)
        self._dp_sent = len(cohort)
        return cohort, ledger

    # -------------------------------------------------------------------- work
    def trainer_for(self, device: Device) -> str:
        return RECORD_TRAINER if self.privacy.record.enabled else super().trainer_for(device)

    def work_for(self, device: Device, server_round: int) -> Work:
        work = super().work_for(device, server_round)
        if self.privacy.noise_placement == "client":
            share = self.privacy_plan.sigma * self.privacy_plan.clip_norm / math.sqrt(max(self._dp_sent, 1))
            work.extra.update({"dp_clip": self.privacy_plan.clip_norm, "dp_noise_std": share,
                               "dp_rng": self.privacy.rng})
        if self.privacy.record.enabled:
            rec = self.privacy.record
            work.extra.update({"dp_record_sigma": rec.noise_multiplier, "dp_record_clip": rec.clip_norm})
        return work

    # ------------------------------------------------------------- aggregation
    def norm_floor(self) -> float:
        """With client-side noise an honest delta carries its noise share (norm ~ std x sqrt(size)): the default
        norm bound must not reject it, whatever the adapter's own norm."""
        floor = super().norm_floor()
        if self.privacy.noise_placement == "client":
            plan, size = self.privacy_plan, sum(v.size for v in self._global.values())
            share = plan.sigma * plan.clip_norm / math.sqrt(max(self._dp_sent, 1))
            floor = max(floor, plan.clip_norm + 2 * share * math.sqrt(size))
        return floor

    def valid_updates(self, server_round: int, replies):
        """Valid replies as the DP server may use them: once checked, every part that depends on the device's
        data and is not the delta (which only the mechanism releases) is dropped (protocol/messages.py
        REPLY_FIELDS)."""
        accepted, failed = super().valid_updates(server_round, replies)
        keep = self.privacy.record.enabled
        accepted = [(withhold_private(u, keep_record_accounting=keep), size) for u, size in accepted]
        self._ledger.checked.accepted = accepted
        return accepted, failed

    def aggregate_updates(self, server_round: int, updates: list[Update]) -> dict[str, np.ndarray]:
        """Each update mapped into the global adapter's coordinates first (ranks zero-padded, pruned heads and
        channels as zeros), then clipped in that full space and noised on every coordinate (docs/privacy.md)."""
        plan = self.privacy_plan
        client_side = self.privacy.noise_placement == "client"
        mean, report = dp_mean(
            [self.full_coordinates(u) for u in updates], self._global, plan.clip_norm, plan.sigma, plan.expected_cohort,
            self._dp_noise, pre_noised=client_side, noised_share_each=1.0 / max(self._dp_sent, 1),
        )
        logger.debug("round %d: %d contributions, %d clipped", server_round, report.contributions, report.clipped)
        return mean

    def aggregate_train(
        self, server_round: int, replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics = dict(metrics or {})
        if arrays is None and not self._dp_exhausted:
            # nobody (valid) answered: the mechanism still releases (0 + noise) / qN, as its analysis assumes
            released = apply_delta(self._global, self.aggregate_updates(server_round, []))
            compose = getattr(self, "compose_global", None)  # e.g. DP-DyLoRA: round-rank slice -> full adapter
            arrays = to_array_record(compose(released) if compose else released)
        if self.privacy.record.enabled:
            metrics.update(self._record_level([u for u, _ in self._ledger.checked.accepted]))
        metrics.update(self.privacy_metrics())
        self._save_privacy_state()
        return arrays, MetricRecord(metrics)

    # --------------------------------------------------------------- reporting
    def privacy_metrics(self) -> dict[str, float]:
        b = self.privacy_budget
        return {
            "privacy/epsilon": b.epsilon() if b.sigma > 0 else math.inf,
            "privacy/delta": b.delta,
            "privacy/noise_multiplier": b.sigma,
            "privacy/sample_rate": b.sample_rate,
            "privacy/rounds_spent": float(b.rounds_spent),
            "privacy/budget_exhausted": float(self._dp_exhausted),
        }

    def _record_level(self, updates: list[Update]) -> dict[str, float]:
        """Compose each device's record-level DP-SGD steps in its own Opacus accountant (accepted replies only;
        no more steps than the work asked for, so a reply cannot make the server loop)."""
        from privacy.accounting import make_accountant

        for u in updates:
            if "dp_record_steps" not in u.metrics:
                continue
            work = self._ledger.work.get(u.device_index)
            steps, sigma, q = (u.metrics.get(k) for k in ("dp_record_steps", "dp_record_sigma", "dp_record_q"))
            if work is None or not all(isinstance(v, float) and math.isfinite(v) for v in (steps, sigma, q)) \
                    or not (0 <= steps <= work.local_steps and sigma >= 0 and 0 <= q <= 1):
                logger.warning("device %d: unusable record-level DP report %s", u.device_index,
                               (steps, sigma, q))
                continue
            # delta = 1 / n^1.1 over the device's records: n as the server knows it (its windows in a simulation,
            # validation.max_examples in a deployment); the reply's own count was withheld as private
            records = self.max_examples(u.device_index)
            if records is None:
                logger.warning("device %d: record-level epsilon needs its record count (validation.max_examples)",
                               u.device_index)
                continue
            acc = self._record_accountants.setdefault(
                u.device_index, make_accountant(self.privacy.record.accountant, "poisson", 0))
            for _ in range(int(u.metrics["dp_record_steps"])):
                acc.step(noise_multiplier=u.metrics["dp_record_sigma"], sample_rate=u.metrics["dp_record_q"])
            self._record_delta[u.device_index] = 1.0 / max(records, 2) ** 1.1
        eps = [a.get_epsilon(delta=self._record_delta[i]) for i, a in self._record_accountants.items()]
        return {"privacy/record_epsilon_max": max(eps)} if eps else {}

    # ------------------------------------------------------------------- state
    def get_state(self) -> dict:
        """Everything a resumed run needs so that it never forgets spent budget (issue 6 checkpoints this)."""
        return {
            **super().get_state(),  # the strategy's own (clock, model version, ...)
            "user": self.privacy_budget.get_state(),
            "record": {str(i): {"history": [list(h) for h in a.history], "mechanism": a.mechanism(),
                                "delta": self._record_delta[i]}
                       for i, a in self._record_accountants.items()},
            # the positions of the server's DP streams (seeded rng): a resumed run draws the cohorts and the
            # noise the uninterrupted run would have, and never reuses a draw (None: secure, nothing to keep)
            "dp_rng": {"sampling": self._dp_sampler.get_state(), "noise": self._dp_noise.get_state()},
        }

    def set_state(self, state: dict) -> None:
        from privacy.accounting import make_accountant

        super().set_state(state)
        self.privacy_budget.set_state(state["user"])
        rng = state.get("dp_rng") or {}
        if self.privacy.rng == "seeded" and not (rng.get("sampling") and rng.get("noise")):
            logger.warning("the checkpoint has no DP generator state (an older run): cohorts and noise restart "
                           "from the seed, and seeded noise may repeat earlier rounds' draws")
        if rng.get("sampling") is not None:
            self._dp_sampler.set_state(rng["sampling"])
        if rng.get("noise") is not None:
            self._dp_noise.set_state(rng["noise"])
        self._record_accountants.clear()
        for key, rec in state.get("record", {}).items():
            acc = make_accountant(self.privacy.record.accountant, "poisson", 0)
            acc.load_state_dict({"history": [tuple(h) for h in rec["history"]], "mechanism": rec["mechanism"]})
            self._record_accountants[int(key)] = acc
            self._record_delta[int(key)] = rec["delta"]

    def _save_privacy_state(self) -> None:
        state = {k: v for k, v in self.get_state().items() if k != "dp_rng"}  # the noise stream stays private
        out = Path(self.settings.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "privacy_state.json").write_text(json.dumps(state, indent=2))
        except OSError as err:
            logger.warning("could not write privacy_state.json: %s", err)
        for observer in self.observers:
            if hasattr(observer, "log_dict"):
                observer.log_dict(state, "privacy/accountant.json")

    def summary(self) -> None:
        super().summary()
        p = self.privacy_plan
        logger.info("user-level DP: N=%d q=%.4g sigma=%.4g C=%g delta=%.3g planned epsilon=%.3g",
                    p.population, p.sample_rate, p.sigma, p.clip_norm, p.delta, p.planned_epsilon)


def with_user_dp(strategy_cls: type[FleetFedAvg]) -> type[FleetFedAvg]:
    """``strategy_cls`` with user-level DP-FedAvg (works for any FleetFedAvg subclass)."""
    if issubclass(strategy_cls, UserLevelDP):
        return strategy_cls
    return type(f"UserDP{strategy_cls.__name__}", (UserLevelDP, strategy_cls), {})


def strategy_for(settings) -> type[FleetFedAvg]:
    from strategies import strategy_class

    cls = strategy_class(settings.method.name)
    return with_user_dp(cls) if settings.privacy.mode == "user" else cls
