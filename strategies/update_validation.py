"""Checks every training reply must pass before it may touch the global adapter.

A reply is either a **failure** (the device reported an error) or it is **rejected** for the first rule it
breaks, in this order (cheap checks first: nothing expensive runs on a reply that fails a cheap one):

====================  ==========================================================================
reason                rule
====================  ==========================================================================
``malformed``         the reply cannot be read as an Update, or any check raised on it (never raises out)
``duplicate``         the device already replied this round (the first reply stands)
``oversize``          the reply's records exceed ``validation.max_message_mb``
``stale_round``       the update answers another round than the one being aggregated
``stale_version``     the update was computed from another global model version
``unknown_device``    the device index is not the one its node was sent work as, this round
``seed_upload``       a seed-only upload the device was not asked for, or whose seeds/gradients do not match
                      its work (checked before any replay: zeroqat/upload.py)
``keys``              the delta's tensor names differ from the global adapter's
``shapes``            a tensor's shape differs from the global adapter's
``dtype``             a tensor is not the global adapter's floating type
``nonfinite``         a tensor holds NaN or Inf
``examples``          ``num-examples`` is not in 1..the device's known data size (its aggregation weight)
``metrics``           ``compute_s``, ``host_gflops`` or ``train_loss`` is missing, not finite, or negative; or
                      any reported time (``*_s``, e.g. ``stall_s``) is not finite or negative
``diverged``          the reply's own losses say its local training blew up (``loss_end`` more than
                      ``validation.max_loss_rise`` nats above the loss the trained model started from, or
                      not finite): ``loss_start``, or for a device that pruned this round (FedSpine)
                      ``loss_pruned``, its loss right after its last pruning step
``norm``              the delta's L2 norm exceeds ``validation.max_update_norm`` (absolute, before the
                      outlier rule) or the default bound (after it; see :func:`default_norm_bound`)
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
    "malformed", "duplicate", "oversize", "stale_round", "stale_version", "unknown_device", "seed_upload", "keys",
    "shapes", "dtype", "nonfinite", "examples", "metrics", "diverged", "norm", "norm_outlier",
)
REQUIRED_METRICS = ("compute_s", "host_gflops", "train_loss")  # the simulated clock and train/loss read them


class ReplyRejected(ValueError):
    """Raised by a strategy's expansion hook (e.g. a seed upload's checks) to reject a reply with a reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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


@dataclass
class RoundLimits:
    """What the server knows about this round's replies beyond their shapes (all optional)."""

    max_examples: Callable[[int], int | None] | None = None  # device index -> the most num-examples it may claim
    expand: Callable[[Update], Update] | None = None  # checked, then expanded (seed uploads); may raise ReplyRejected
    norm_bound: float | None = None  # the default absolute L2 bound on a delta this round (default_norm_bound)


def message_bytes(msg: Message) -> int:
    return sum(record.count_bytes() for record in msg.content.values())


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values())))


def default_norm_bound(factor: float | None, global_norm: float, recent_norms: Iterable[float],
                       floor: float = 0.0) -> float | None:
    """The absolute bound every round has, even a single-reply one: ``factor`` x the larger of the global
    adapter's norm and the median accepted delta norm of recent rounds (``floor``: a scale the strategy knows
    honest deltas reach, e.g. client-side DP noise). None when off or when there is no scale yet."""
    recent = [float(n) for n in recent_norms if np.isfinite(n) and n > 0]
    scale = max(global_norm if np.isfinite(global_norm) else 0.0, float(np.median(recent)) if recent else 0.0, floor)
    if factor is None or scale <= 0:
        return None
    return factor * scale


def _structure_problem(delta: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    if delta.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - delta.keys()), sorted(map(str, delta.keys() - reference.keys()))
        return "keys", f"missing {missing[:2]}, unexpected {extra[:2]}"
    for k, ref in reference.items():
        if not isinstance(delta[k], np.ndarray) or delta[k].shape != ref.shape:
            return "shapes", f"{k}: {getattr(delta[k], 'shape', type(delta[k]).__name__)} instead of {ref.shape}"
    for k, ref in reference.items():
        if delta[k].dtype != ref.dtype:
            return "dtype", f"{k}: {delta[k].dtype} instead of {ref.dtype}"
    for k, value in delta.items():
        if not np.all(np.isfinite(value)):
            return "nonfinite", f"{k} holds NaN or Inf"
    return None


def _finite_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def _metrics_problem(metrics: Mapping[str, float]) -> tuple[str, str] | None:
    for key in REQUIRED_METRICS:
        value = metrics.get(key)
        if not _finite_number(value) or value < 0 or (key == "host_gflops" and value == 0):
            return "metrics", f"{key} = {value}"
    for key, value in metrics.items():  # every reported time (stall_s, decode_s, ...) is a duration
        if key.endswith("_s") and (not _finite_number(value) or value < 0):
            return "metrics", f"{key} = {value} (a time must be finite and >= 0)"
    return None


def _divergence_problem(metrics: Mapping[str, float], max_rise: float | None) -> tuple[str, str] | None:
    """The device's own loss trajectory (``loss_start``/``loss_end``: means of its first and last steps).

    A device that prunes during the round (FedSpine) trains a different, smaller model after each pruning step;
    its training is judged from where the model it trained last started: ``loss_pruned``, the loss right after
    its last pruning step. The jump that pruning itself causes is not training blowing up: it is the quality
    the pruned arm costs (the bandit's loss term and the pruned model's perplexity price it). Trainers that do
    not prune send no ``loss_pruned`` and keep the plain rule; ``loss_start`` and ``loss_pruned`` must both be
    finite."""
    if max_rise is None or "loss_end" not in metrics:
        return None
    start, end = metrics.get("loss_start"), metrics["loss_end"]
    if not _finite_number(end) or not _finite_number(start):
        return "diverged", f"loss {start} -> {end}"
    if "loss_pruned" in metrics:
        pruned = metrics["loss_pruned"]
        if not _finite_number(pruned):
            return "diverged", f"loss after pruning {pruned}"
        if end > pruned + max_rise:
            return "diverged", (f"loss rose from {pruned:.4g} (after its last pruning step) to {end:.4g} "
                                f"(> {max_rise:g} nats)")
        return None
    if end > start + max_rise:
        return "diverged", f"loss rose from {start:.4g} to {end:.4g} (> {max_rise:g} nats)"
    return None


def _examples_problem(update: Update, limits: RoundLimits) -> tuple[str, str] | None:
    n = update.num_examples
    if n <= 0:
        return "examples", f"num-examples = {n}"
    cap = limits.max_examples(update.device_index) if limits.max_examples else None
    if cap is not None and n > cap:
        return "examples", f"num-examples = {n} > {cap}, what the server knows the device holds"
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
        limits: RoundLimits | None = None,
    ) -> Checked:
        """Validate replies against ``reference`` (names, shapes, dtype): the global adapter the round was sent,
        or a function giving each update its own (strategies whose devices train different ranks).
        ``device_of_node``: the device each node was sent work as, this round. ``parse`` turns a reply into an
        Update (cheaply: no expansion); ``limits.expand`` then expands a compressed upload, only for a reply
        whose identity checks passed (the size rule sees the wire size). Nothing raises out of here."""
        limits = limits or RoundLimits()
        out = Checked()
        parsed: list[tuple[Update, int]] = []
        seen: set[int] = set()
        for msg in replies:
            try:
                sender = int(device_of_node.get(msg.metadata.src_node_id, -1))
            except Exception:  # noqa: BLE001 - a message without readable metadata
                sender = -1
            if sender >= 0 and sender in seen:
                out.rejected.append(Verdict(sender, "duplicate", "a second reply this round; the first stands"))
                continue
            seen.add(sender)
            try:
                verdict, update = self._check_one(msg, sender, server_round, model_version, reference, parse, limits)
            except Exception as err:  # noqa: BLE001 - whatever a reply holds, it is a rejection, never a crash
                verdict, update = (getattr(err, "reason", "malformed"), f"{type(err).__name__}: {err}"), None
            if verdict is None:
                parsed.append(update)
            elif verdict[0] == "error":
                out.failed.append(Verdict(sender, *verdict))
            else:  # named by the node's device where known (a liar is named by its node)
                claimed = update.device_index if update is not None else -1
                out.rejected.append(Verdict(sender if sender >= 0 else claimed, verdict[0], str(verdict[1])[:500]))
        parsed = self._drop_norm_outliers(parsed, out)
        parsed = self._drop_over_bound(parsed, out, limits.norm_bound)
        out.accepted = sorted(parsed, key=lambda pair: pair[0].device_index)
        for v in out.failed:
            logger.warning("round %d: device %d failed (%s): %s", server_round, v.device_index, v.reason, v.detail)
        for v in out.rejected:
            logger.warning("round %d: rejected the update of device %d (%s): %s", server_round, v.device_index,
                           v.reason, v.detail)
        return out

    def _check_one(self, msg: Message, sender: int, server_round: int, model_version: int, reference,
                   parse: Callable[[Message], Update], limits: RoundLimits):
        """(None, (update, bytes up)) when accepted so far, else ((reason, detail), update or None)."""
        if msg.has_error():
            return ("error", msg.error.reason), None
        size = message_bytes(msg)
        limit = self.cfg.max_message_mb * 2**20
        if size > limit:  # before parsing: a huge reply is never decoded
            return ("oversize", f"{size / 2**20:.3g} MiB > {self.cfg.max_message_mb:g} MiB"), None
        update = parse(msg)
        if update.server_round != server_round:
            return ("stale_round", f"answers round {update.server_round}, not {server_round}"), update
        if update.model_version not in (-1, model_version):  # -1: a client that does not report it
            return ("stale_version", f"trained on version {update.model_version}, not {model_version}"), update
        if update.device_index != sender:
            return ("unknown_device", f"claims device {update.device_index}; its node was sent work as device "
                    f"{sender} this round (-1: none)"), update
        bytes_up = msg.content[ARRAYS].count_bytes()
        if limits.expand is not None:
            update = limits.expand(update)
        expected = reference(update) if callable(reference) else reference
        verdict = (_structure_problem(update.delta, expected) or _examples_problem(update, limits)
                   or _metrics_problem(update.metrics)
                   or _divergence_problem(update.metrics, self.cfg.max_loss_rise))
        if verdict is None and self.cfg.max_update_norm is not None:
            norm = delta_norm(update.delta)
            if norm > self.cfg.max_update_norm:
                verdict = ("norm", f"L2 norm {norm:.3g} > bound {self.cfg.max_update_norm:g}")
        return verdict, (update, bytes_up) if verdict is None else update

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

    @staticmethod
    def _drop_over_bound(parsed: list[tuple[Update, int]], out: Checked, bound: float | None
                         ) -> list[tuple[Update, int]]:
        """The default absolute bound: holds in every round, a single-reply one included."""
        if bound is None:
            return parsed
        kept = []
        for pair in parsed:
            norm = delta_norm(pair[0].delta)
            if norm > bound:
                out.rejected.append(Verdict(pair[0].device_index, "norm",
                                            f"L2 norm {norm:.3g} > default bound {bound:.3g}"))
            else:
                kept.append(pair)
        return kept


__all__ = ["REASONS", "Checked", "ReplyRejected", "RoundLimits", "UpdateValidator", "Verdict", "default_norm_bound",
           "delta_norm", "message_bytes"]
