"""A round's metrics from its accepted replies (train loss, compute, memory per trainer and per device class)
and from its federated evaluation replies."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Message, MetricRecord

from fleet.devices import Device
from protocol.messages import METRICS, NUM_EXAMPLES, Update


def class_metrics(good: list[tuple[Update, int]], devices: list[Device]) -> dict[str, float]:
    """Per device class: train loss (example-weighted), replies and upload bytes (e.g. phones vs Jetsons)."""
    out: dict[str, float] = {}
    for name in sorted({devices[u.device_index].class_name for u, _ in good}):
        rows = [(u, b) for u, b in good if devices[u.device_index].class_name == name]
        weights = [u.num_examples for u, _ in rows]
        if all("train_loss" in u.metrics for u, _ in rows):  # withheld under user-level DP (private)
            out[f"train/loss/{name}"] = float(np.average([u.metrics["train_loss"] for u, _ in rows],
                                                         weights=weights))
        out[f"fleet/replies/{name}"] = len(rows)
        out[f"comm/bytes_up/{name}"] = sum(b for _, b in rows)
    return out


def reply_metrics(updates: list[Update], good: list[tuple[Update, int]], devices: list[Device],
                  trainer_for: Callable[[Device], str]) -> dict[str, float]:
    """Train loss (example-weighted; absent when withheld under user-level DP), client compute, peak memory,
    then the same per trainer and per device class."""
    metrics: dict[str, float] = {}
    weights = np.array([u.num_examples for u in updates], dtype=float)
    losses = all("train_loss" in u.metrics for u in updates)  # withheld under user-level DP (private)
    if losses:
        metrics["train/loss"] = float(np.average([u.metrics["train_loss"] for u in updates], weights=weights))
    metrics.update({
        "timing/client_compute_s": sum(u.metrics["compute_s"] for u in updates),
        "memory/peak_rss_mb": max(u.metrics.get("peak_rss_mb", 0.0) for u in updates),
        **class_metrics(good, devices),
    })
    for trainer in {trainer_for(devices[u.device_index]) for u in updates}:
        mine = [u for u in updates if trainer_for(devices[u.device_index]) == trainer]
        metrics[f"memory/peak_rss_mb.{trainer}"] = max(u.metrics.get("peak_rss_mb", 0.0) for u in mine)
        if losses:
            metrics[f"train/loss.{trainer}"] = float(np.mean([u.metrics["train_loss"] for u in mine]))
    return metrics


def federated_eval_metrics(replies: Iterable[Message]) -> MetricRecord | None:
    """Token-weighted loss, perplexity and accuracy of the devices' own test splits (None: no usable reply)."""
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
