"""DP-DyLoRA (Xu et al. 2024) and DP-LoRA: FedAvg over a nested LoRA adapter at one server-chosen rank per round.

Each round the server draws b from a public distribution (``method.dylora``; seeded by the run's seed and the
round, never by client data), sends every client the rank-b truncation of the global rank-R adapter with
``Work.rank = b``, and writes the aggregated rank-b result back into the first b components. With
``privacy=user_dp`` (which conf/method/dp_dylora.yaml selects) the rank-b updates are clipped and noised as a
whole (privacy.dp_fedavg), and noise lands only on those b components: the update's dimension is public.
``dp_lora`` is the same with b = R every round. After training, every rank up to R is evaluated centrally.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from fleet.devices import Device
from privacy.dylora import embed, evaluate_at_rank, sample_rank, truncate
from protocol.messages import from_array_record, to_array_record
from runconfig.errors import ConfigError
from runconfig.schema import DyLoraConfig
from strategies.fleet_fedavg import FleetFedAvg, seeded


class CentralEvaluation(Protocol):
    """server/central_evaluation.py:CentralEvaluator: the server's model and held-out windows."""

    model: torch.nn.Module
    inputs: torch.Tensor
    labels: torch.Tensor

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None: ...


class DyLoraFedAvg(FleetFedAvg):
    def __init__(self, settings, *args, **kwargs) -> None:
        super().__init__(settings, *args, **kwargs)
        cfg = settings.method.dylora or DyLoraConfig(rank_distribution="fixed", min_rank=settings.method.lora.rank)
        self.dylora = cfg
        self.max_rank = settings.method.lora.rank
        if not 1 <= cfg.min_rank <= self.max_rank:
            raise ConfigError(f"config key 'method.dylora.min_rank': must be in [1, {self.max_rank}]. "
                              f"Fix: method.dylora.min_rank=1")
        bad = [r for r in cfg.eval_ranks if not 1 <= r <= self.max_rank]
        if bad:
            raise ConfigError(f"config key 'method.dylora.eval_ranks': {bad} outside [1, {self.max_rank}]. "
                              "Fix: ranks up to method.lora.rank")
        self._round_rank = self.max_rank
        self._full: dict[str, np.ndarray] = {}

    def round_rank(self, server_round: int) -> int:
        rng = np.random.default_rng(seeded(self.settings.seed, server_round, "dylora-rank"))
        return sample_rank(rng, self.dylora.rank_distribution, self.dylora.min_rank, self.max_rank)

    def rank_for(self, device: Device, server_round: int) -> int:
        return self._round_rank

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._full = from_array_record(arrays)
        self._round_rank = self.round_rank(server_round)
        part = to_array_record(truncate(self._full, self._round_rank))
        return super().configure_train(server_round, part, config, grid)

    def compose_global(self, round_global: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rank-b result of this round written into the first b components of the rank-R adapter."""
        return embed(self._full, round_global, self._round_rank)

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics = {**dict(metrics or {}), "dylora/rank": float(self._round_rank)}
        if arrays is not None:
            arrays = to_array_record(self.compose_global(from_array_record(arrays)))
        return arrays, MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._round_rank = self.max_rank  # clients evaluate the whole adapter
        return super().configure_evaluate(server_round, arrays, config, grid)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config=None, evaluate_config=None,
              evaluate_fn: CentralEvaluation | None = None,
              first_round: int = 1) -> Result:
        """As FleetFedAvg.start; the central evaluation of the last round also scores each of ``eval_ranks``."""
        wrapped = evaluate_fn
        if evaluate_fn is not None and self.dylora.eval_ranks:
            def wrapped(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                metrics = evaluate_fn(server_round, arrays)
                if server_round == num_rounds:
                    metrics = MetricRecord({**dict(metrics or {}), **self.rank_metrics(evaluate_fn, arrays)})
                return metrics
        return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, wrapped,
                             first_round=first_round)

    def rank_metrics(self, evaluator: CentralEvaluation, arrays: ArrayRecord) -> dict[str, float]:
        adapter = from_array_record(arrays)
        out = {}
        for b in sorted(set(self.dylora.eval_ranks)):
            score = evaluate_at_rank(evaluator.model, adapter, b, self.settings.method.lora,
                                     evaluator.inputs, evaluator.labels)
            out[f"eval/global_accuracy_r{b}"] = score.accuracy
            out[f"eval/global_ppl_r{b}"] = score.perplexity
        return out
