"""User-level DP-FedAvg (McMahan et al. 2018) as a layer over any FleetFedAvg strategy.

``with_user_dp(strategy)`` composes a :class:`UserLevelDP` into the strategy (its ``privacy`` layer and its
``train_selection``) and changes exactly what DP needs, through strategies/privacy_layer.py's interface:

* **cohort**: Poisson sampling of the whole population at q = cohort_size / N (or exactly cohort_size, fixed),
  from the DP generator; devices that then turn out offline or too small drop out through the strategy's own
  filter (privacy/sampling.py:PoissonSelection; a data-independent thinning, so accounting at q stays an upper
  bound);
* **aggregation**: equal weights, each whole update clipped to C, N(0, (sigma C)^2) on the sum, divided by the
  expected cohort q N (privacy.mechanism.dp_mean); a round with no valid reply still releases noise;
* **accounting**: one accountant step per round (Opacus RDP/PRV), ``privacy/epsilon`` after every round,
  training stops (no more cohorts) before the budget would be exceeded, state in ``get_state``/``set_state``
  and written each round (``privacy/accountant.json``, an artifact event);
* **record-level DP-SGD** (optional): tells clients to train with Opacus, composes each device's reported
  steps in its own accountant on the server, logged as ``privacy/record_epsilon_max`` (separate guarantee).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from privacy.mechanism import dp_mean
from privacy.noise import noise_source
from privacy.plan import resolve_plan
from privacy.sampling import PoissonSelection
from protocol.messages import Update, Work, withhold_private
from runconfig.combinations import RECORD_TRAINER
from strategies.fleet_fedavg import FleetFedAvg, seeded
from strategies.privacy_layer import PrivacyLayer

logger = logging.getLogger(__name__)


class UserLevelDP(PrivacyLayer):
    """The DP layer of one strategy (``with_user_dp`` builds it and puts it on)."""

    def __init__(self, strategy: FleetFedAvg) -> None:
        settings = strategy.settings
        p = settings.privacy
        self.strategy = strategy
        self.settings = settings
        self.privacy = p
        self.plan = resolve_plan(settings)
        self.budget = self.plan.new_budget(p.accountant, p.sampling)
        self._noise = noise_source(p.rng, seeded(settings.seed, "dp-noise"))
        self._sampler = noise_source(p.rng, seeded(settings.seed, "dp-sampling"))
        self.selection = PoissonSelection(strategy.devices, settings.seed, p.sampling, self.plan, self.budget,
                                          self._sampler)
        self._record_accountants: dict[int, object] = {}
        self._record_delta: dict[int, float] = {}

    @property
    def exhausted(self) -> bool:
        """The budget allowed no cohort this round."""
        return self.selection.exhausted

    def _share(self) -> float:
        """Each client's noise std under client-side placement (the last cohort's size)."""
        return self.plan.sigma * self.plan.clip_norm / math.sqrt(max(self.selection.sent, 1))

    # -------------------------------------------------------------------- work
    def trainer(self) -> str | None:
        return RECORD_TRAINER.value if self.privacy.record.enabled else None

    def decorate(self, work: Work) -> Work:
        if self.privacy.noise_placement == "client":
            work.extra.update({"dp_clip": self.plan.clip_norm, "dp_noise_std": self._share(),
                               "dp_rng": self.privacy.rng})
        if self.privacy.record.enabled:
            rec = self.privacy.record
            work.extra.update({"dp_record_sigma": rec.noise_multiplier, "dp_record_clip": rec.clip_norm})
        return work

    # ------------------------------------------------------------- aggregation
    def norm_floor(self, global_adapter) -> float:
        """With client-side noise an honest delta carries its noise share (norm ~ std x sqrt(size)): the default
        norm bound must not reject it, whatever the adapter's own norm."""
        if self.privacy.noise_placement != "client":
            return 0.0
        size = sum(v.size for v in global_adapter.values())
        return self.plan.clip_norm + 2 * self._share() * math.sqrt(size)

    def released(self, accepted: list[tuple[Update, int]]) -> list[tuple[Update, int]]:
        """Valid replies as the DP server may use them: once checked, every part that depends on the device's
        data and is not the delta (which only the mechanism releases) is dropped (protocol/messages.py
        REPLY_FIELDS)."""
        keep = self.privacy.record.enabled
        return [(withhold_private(u, keep_record_accounting=keep), size) for u, size in accepted]

    def round_delta(self, server_round: int, updates: list[Update], own_rule) -> dict[str, np.ndarray]:
        """Each update mapped into the global adapter's coordinates first (ranks zero-padded, pruned heads and
        channels as zeros), then clipped in that full space and noised on every coordinate (docs/privacy.md)."""
        plan, strategy = self.plan, self.strategy
        client_side = self.privacy.noise_placement == "client"
        mean, report = dp_mean(
            [strategy.full_coordinates(u) for u in updates], strategy._global, plan.clip_norm, plan.sigma,
            plan.expected_cohort, self._noise, pre_noised=client_side,
            noised_share_each=1.0 / max(self.selection.sent, 1),
        )
        logger.debug("round %d: %d contributions, %d clipped", server_round, report.contributions, report.clipped)
        return mean

    def releases_without_replies(self) -> bool:
        """Nobody (valid) answered: the mechanism still releases (0 + noise) / qN, as its analysis assumes."""
        return not self.exhausted

    def round_metrics(self, accepted: list[Update]) -> dict[str, float]:
        out = self._record_level(accepted) if self.privacy.record.enabled else {}
        return {**out, **self.metrics()}

    def after_round(self) -> None:
        self.save_state()

    # --------------------------------------------------------------- reporting
    def metrics(self) -> dict[str, float]:
        b = self.budget
        return {
            "privacy/epsilon": b.epsilon() if b.sigma > 0 else math.inf,
            "privacy/delta": b.delta,
            "privacy/noise_multiplier": b.sigma,
            "privacy/sample_rate": b.sample_rate,
            "privacy/rounds_spent": float(b.rounds_spent),
            "privacy/budget_exhausted": float(self.exhausted),
        }

    def _record_level(self, updates: list[Update]) -> dict[str, float]:
        """Compose each device's record-level DP-SGD steps in its own Opacus accountant (accepted replies only;
        no more steps than the work asked for, so a reply cannot make the server loop)."""
        from privacy.accounting import make_accountant

        for u in updates:
            if "dp_record_steps" not in u.metrics:
                continue
            work = self.strategy._ledger.work.get(u.device_index)
            steps, sigma, q = (u.metrics.get(k) for k in ("dp_record_steps", "dp_record_sigma", "dp_record_q"))
            if work is None or not all(isinstance(v, float) and math.isfinite(v) for v in (steps, sigma, q)) \
                    or not (0 <= steps <= work.local_steps and sigma >= 0 and 0 <= q <= 1):
                logger.warning("device %d: unusable record-level DP report %s", u.device_index,
                               (steps, sigma, q))
                continue
            # delta = 1 / n^1.1 over the device's records: n as the server knows it (its windows in a simulation,
            # validation.max_examples in a deployment); the reply's own count was withheld as private
            records = self.strategy.max_examples(u.device_index)
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
            "user": self.budget.get_state(),
            "record": {str(i): {"history": [list(h) for h in a.history], "mechanism": a.mechanism(),
                                "delta": self._record_delta[i]}
                       for i, a in self._record_accountants.items()},
            # the positions of the server's DP streams (seeded rng): a resumed run draws the cohorts and the
            # noise the uninterrupted run would have, and never reuses a draw (None: secure, nothing to keep)
            "dp_rng": {"sampling": self._sampler.get_state(), "noise": self._noise.get_state()},
        }

    def set_state(self, state: dict) -> None:
        from privacy.accounting import make_accountant

        self.budget.set_state(state["user"])
        rng = state.get("dp_rng") or {}
        if self.privacy.rng == "seeded" and not (rng.get("sampling") and rng.get("noise")):
            logger.warning("the checkpoint has no DP generator state (an older run): cohorts and noise restart "
                           "from the seed, and seeded noise may repeat earlier rounds' draws")
        if rng.get("sampling") is not None:
            self._sampler.set_state(rng["sampling"])
        if rng.get("noise") is not None:
            self._noise.set_state(rng["noise"])
        self._record_accountants.clear()
        for key, rec in state.get("record", {}).items():
            acc = make_accountant(self.privacy.record.accountant, "poisson", 0)
            acc.load_state_dict({"history": [tuple(h) for h in rec["history"]], "mechanism": rec["mechanism"]})
            self._record_accountants[int(key)] = acc
            self._record_delta[int(key)] = rec["delta"]

    def save_state(self) -> None:
        """privacy_state.json in the output folder and the ``privacy/accountant.json`` artifact: the strategy's
        whole state (what a resume needs), without the DP noise stream's position (private)."""
        state = {k: v for k, v in self.strategy.get_state().items() if k != "dp_rng"}
        out = Path(self.strategy.settings.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "privacy_state.json").write_text(json.dumps(state, indent=2))
        except OSError as err:
            logger.warning("could not write privacy_state.json: %s", err)
        self.strategy.events.on_artifact(state, "privacy/accountant.json")

    def summary(self) -> None:
        p = self.plan
        logger.info("user-level DP: N=%d q=%.4g sigma=%.4g C=%g delta=%.3g planned epsilon=%.3g",
                    p.population, p.sample_rate, p.sigma, p.clip_norm, p.delta, p.planned_epsilon)


def with_user_dp(strategy: FleetFedAvg) -> FleetFedAvg:
    """``strategy`` with user-level DP-FedAvg (any FleetFedAvg subclass): its privacy layer and training
    selection replaced, nothing else. Idempotent."""
    if isinstance(strategy.privacy, UserLevelDP):
        return strategy
    layer = UserLevelDP(strategy)
    strategy.privacy = layer
    strategy.train_selection = layer.selection
    return strategy
