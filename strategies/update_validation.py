"""Checks every training reply must pass before it may touch the global adapter.

A reply is either a **failure** (the device reported an error, or the message carries no update) or, if it
parses, it is **rejected** for the first rule it breaks, in this order:

====================  ==========================================================================
reason                rule
====================  ==========================================================================
``oversize``          the reply's records exceed ``validation.max_message_mb``
``stale_round``       the update answers another round than the one being aggregated
``stale_version``     the update was computed from another global model version
``unknown_device``    the device index is not the one its node was sent work as, this round
``keys``              the delta's tensor names differ from the global adapter's
``shapes``            a tensor's shape differs from the global adapter's
``dtype``             a tensor is not the global adapter's floating type
``nonfinite``         a tensor holds NaN or Inf
``examples``          ``num-examples`` is not positive
``metrics``           ``compute_s``, ``host_gflops`` or ``train_loss`` is missing, not finite, or negative
``norm``              the delta's L2 norm exceeds ``validation.max_update_norm``
``norm_outlier``      the norm exceeds ``norm_outlier_factor`` x the median norm of the other deltas
====================  ==========================================================================

Every failure and rejection is logged with the device and the reason and returned, so the strategy can count
them (MLflow ``fleet/failures``, ``fleet/rejected``, ``fleet/rejected/<reason>``); the round goes on with the
rest. Accepted updates come back sorted by device index, so aggregation does not depend on arrival order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from protocol.messages import ARRAYS, Update
from runconfig.schema import ValidationConfig

logger = logging.getLogger(__name__)

REASONS = (
    "oversize", "stale_round", "stale_version", "unknown_device", "keys", "shapes", "dtype", "nonfinite",
    "examples", "metrics", "norm", "norm_outlier",
)
REQUIRED_METRICS = ("compute_s", "host_gflops", "train_loss")  # the simulated clock and train/loss read them


@dataclass(frozen=True)
class Verdict:
    """Why one reply was turned away."""

    device_index: int  # -1 when the reply did not say
    reason: str
    detail: str


@dataclass
class Checked:
    """The outcome of validating one round's replies."""

    accepted: list[tuple[Update, int]] = field(default_factory=list)  # (update, bytes up), by device index
    failed: list[Verdict] = field(default_factory=list)
    rejected: list[Verdict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"fleet/failures": len(self.failed), "fleet/rejected": len(self.rejected)}
        for v in self.rejected:
            out[f"fleet/rejected/{v.reason}"] = out.get(f"fleet/rejected/{v.reason}", 0) + 1
        return out


def message_bytes(msg: Message) -> int:
    return sum(record.count_bytes() for record in msg.content.values())


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values())))


def _structure_problem(delta: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    if delta.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - delta.keys()), sorted(delta.keys() - reference.keys())
        return "keys", f"missing {missing[:2]}, unexpected {extra[:2]}"
    for k, ref in reference.items():
        if delta[k].shape != ref.shape:
            return "shapes", f"{k}: {delta[k].shape} instead of {ref.shape}"
    for k, ref in reference.items():
        if delta[k].dtype != ref.dtype:
            return "dtype", f"{k}: {delta[k].dtype} instead of {ref.dtype}"
    for k, value in delta.items():
        if not np.all(np.isfinite(value)):
            return "nonfinite", f"{k} holds NaN or Inf"
    return None


def _metrics_problem(metrics: Mapping[str, float]) -> tuple[str, str] | None:
    for key in REQUIRED_METRICS:
        value = metrics.get(key)
        if value is None or not np.isfinite(value) or value < 0 or (key == "host_gflops" and value == 0):
            return "metrics", f"{key} = {value}"
    return None


class UpdateValidator:
    def __init__(self, cfg: ValidationConfig) -> None:
        self.cfg = cfg

    def check(
        self,
        server_round: int,
        model_version: int,
        reference: Mapping[str, np.ndarray] | Callable[[Update], Mapping[str, np.ndarray]],
        replies: Iterable[Message],
        device_of_node: Mapping[int, int],
        parse: Callable[[Message], Update] = Update.from_message,
    ) -> Checked:
        """Validate replies against ``reference`` (names, shapes, dtype): the global adapter the round was sent,
        or a function giving each update its own (strategies whose devices train different ranks).
        ``device_of_node``: the device each node was sent work as, this round. ``parse`` turns a reply into an
        Update (a strategy may expand compressed uploads there; the size rule sees the wire size)."""
        out = Checked()
        parsed: list[tuple[Update, int]] = []
        limit = self.cfg.max_message_mb * 2**20
        for msg in replies:
            sender = device_of_node.get(msg.metadata.src_node_id, -1)
            if msg.has_error():
                out.failed.append(Verdict(sender, "error", msg.error.reason))
                continue
            try:
                update = parse(msg)
            except (KeyError, ValueError, TypeError) as err:
                out.failed.append(Verdict(sender, "unreadable", f"{type(err).__name__}: {err}"))
                continue
            size = message_bytes(msg)
            verdict = None
            if size > limit:
                verdict = ("oversize", f"{size / 2**20:.3g} MiB > {self.cfg.max_message_mb:g} MiB")
            elif update.server_round != server_round:
                verdict = ("stale_round", f"answers round {update.server_round}, not {server_round}")
            elif update.model_version not in (-1, model_version):  # -1: a client that does not report it
                verdict = ("stale_version", f"trained on version {update.model_version}, not {model_version}")
            elif update.device_index != sender:
                verdict = ("unknown_device", f"claims device {update.device_index}; its node was sent work as "
                           f"device {sender} this round (-1: none)")
            else:
                expected = reference(update) if callable(reference) else reference
                verdict = _structure_problem(update.delta, expected)
                if verdict is None and update.num_examples <= 0:
                    verdict = ("examples", f"num-examples = {update.num_examples}")
                if verdict is None:
                    verdict = _metrics_problem(update.metrics)
                if verdict is None and self.cfg.max_update_norm is not None:
                    norm = delta_norm(update.delta)
                    if norm > self.cfg.max_update_norm:
                        verdict = ("norm", f"L2 norm {norm:.3g} > bound {self.cfg.max_update_norm:g}")
            if verdict is not None:  # named by the node's device where known (a liar is named by its node)
                out.rejected.append(Verdict(sender if sender >= 0 else update.device_index, *verdict))
            else:
                parsed.append((update, msg.content[ARRAYS].count_bytes()))
        parsed = self._drop_norm_outliers(parsed, out)
        out.accepted = sorted(parsed, key=lambda pair: pair[0].device_index)
        for v in out.failed:
            logger.warning("round %d: device %d failed (%s): %s", server_round, v.device_index, v.reason, v.detail)
        for v in out.rejected:
            logger.warning("round %d: rejected the update of device %d (%s): %s", server_round, v.device_index,
                           v.reason, v.detail)
        return out

    def _drop_norm_outliers(self, parsed: list[tuple[Update, int]], out: Checked) -> list[tuple[Update, int]]:
        """Norms far above the others' median (needs two or more updates; with two, the larger is judged)."""
        factor = self.cfg.norm_outlier_factor
        if factor is None or len(parsed) < 2:
            return parsed
        norms = [delta_norm(u.delta) for u, _ in parsed]
        kept = []
        for i, pair in enumerate(parsed):
            others = float(np.median(norms[:i] + norms[i + 1 :]))
            if norms[i] > factor * max(others, 1e-12):
                out.rejected.append(Verdict(pair[0].device_index, "norm_outlier",
                                            f"L2 norm {norms[i]:.3g} > {factor:g} x median {others:.3g}"))
            else:
                kept.append(pair)
        return kept


__all__ = ["REASONS", "Checked", "UpdateValidator", "Verdict", "delta_norm", "message_bytes"]
