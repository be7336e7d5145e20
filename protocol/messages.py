"""What crosses the wire between the ServerApp and the ClientApps, in Flower's Message API records.

* Work (server -> device): the global adapter (``arrays``) and a ConfigRecord (``config``) of what to do.
* Update (device -> server): the adapter *delta* (``arrays``, local minus received, in the received
  adapter's coordinates) and a MetricRecord (``metrics``) with ``num-examples`` and measurements.
* Identity (device -> server, answer to a ``query``): which device of the fleet a node is.
* Structure (both ways, optional, ``structure``): a pruned device's kept heads/channels as 0/1 masks (FedSpine);
  with it, an update's delta is in the pruned sub-model's coordinates at ``metrics["rank"]``.

Sending deltas rather than weights makes averaging, clipping and noise speak the same language.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from protocol.work import Work  # noqa: F401  (re-exported: the flwr-free leaf module defines it)

ARRAYS, CONFIG, METRICS, STRUCTURE = "arrays", "config", "metrics", "structure"
NUM_EXAMPLES = "num-examples"


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for name, value in arrays.items():
        record[name] = Array.from_numpy_ndarray(np.ascontiguousarray(value))
    return record


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


@dataclass
class Update:
    """One device's reply to its Work."""

    device_index: int
    server_round: int
    delta: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)  # train_loss, compute_s, host_gflops, ...
    structure: dict[str, np.ndarray] = field(default_factory=dict)  # kept-structure masks (pruned devices)
    model_version: int = -1  # the Work's model_version (-1: not reported)

    def to_content(self) -> RecordDict:
        metrics = {NUM_EXAMPLES: self.num_examples, "device-index": self.device_index,
                   "server-round": self.server_round, "model-version": self.model_version, **self.metrics}
        content = RecordDict({ARRAYS: to_array_record(self.delta), METRICS: MetricRecord(metrics)})
        if self.structure:
            content[STRUCTURE] = to_array_record(self.structure)
        return content

    @classmethod
    def from_message(cls, msg: Message) -> Update:
        metrics = dict(msg.content[METRICS])
        return cls(
            device_index=int(metrics.pop("device-index")),
            server_round=int(metrics.pop("server-round")),
            num_examples=int(metrics.pop(NUM_EXAMPLES)),
            model_version=int(metrics.pop("model-version", -1)),
            delta=from_array_record(msg.content[ARRAYS]),
            metrics={k: float(v) for k, v in metrics.items()},
            structure=from_array_record(msg.content[STRUCTURE]) if STRUCTURE in msg.content else {},
        )


# ---------------------------------------------------------------------------------------------------------
# What each part of a reply reveals, and how user-level DP (privacy=user_dp) treats it (docs/privacy.md).
# Every field of Update and every metric key is classed here; a metric key not listed is PRIVATE (default deny).
MECHANISM = "mechanism"  # private: released only through the Gaussian mechanism (clipped in full coordinates, noised)
PUBLIC = "public"  # sent by the server, or a function of public data and the server's own choices
TELEMETRY = "telemetry"  # the device's cost of fixed-shape work (time, memory, bytes): not read from its records
DERIVED_PUBLIC = "derived_public"  # private unless the server makes it public: under DP the server recomputes it from
#                                    public data and rejects a reply that differs (FedSpine masks, method.fedspine.masks)
PRIVATE = "private"  # depends on the device's records: under DP the server drops it on arrival
RECORD_ACCOUNTING = "record_accounting"  # private: enters only the record-level accountant (a separate guarantee,
#                                          privacy.record; reported as privacy/record_epsilon_max), never the release

REPLY_FIELDS: dict[str, str] = {
    "device_index": PUBLIC,  # the server assigned the work
    "server_round": PUBLIC,
    "model_version": PUBLIC,
    "delta": MECHANISM,
    "num_examples": PRIVATE,  # how much data the user has (DP weights every user equally; FedAvg weights by it)
    "metrics": "per key: REPLY_METRICS",
    "structure": DERIVED_PUBLIC,
}
REPLY_METRICS: dict[str, str] = {
    # FedSpine: the arm and the schedule are the server's; sparsities follow from the (public, under DP) masks
    "rank": PUBLIC, "ratio": PUBLIC, "sparsity": PUBLIC, "sparsity_before": PUBLIC, "prune_steps": PUBLIC,
    "dp_record_sigma": PUBLIC, "dp_record_steps": PUBLIC,  # sent by the server / = client.local_steps
    "dp_record_q": RECORD_ACCOUNTING,  # batch_size / the device's window count
    "compute_s": TELEMETRY, "handler_s": TELEMETRY, "decode_s": TELEMETRY, "host_gflops": TELEMETRY,
    "peak_rss_mb": TELEMETRY, "torch_threads": TELEMETRY, "stall_s": TELEMETRY, "batched_devices": TELEMETRY,
    "adapter_bytes": TELEMETRY, "seed_bytes": TELEMETRY,
    # listed for readers; PRIVATE is also the default of any key not listed
    "train_loss": PRIVATE, "loss_start": PRIVATE, "loss_end": PRIVATE, "update_norm": PRIVATE,
    "zo_grad_abs_mean": PRIVATE, "dp_record_epsilon_round": PRIVATE,
}


def metric_class(key: str) -> str:
    return REPLY_METRICS.get(key, PRIVATE)


def withhold_private(update: Update, keep_record_accounting: bool = False) -> Update:
    """The update as a user-level DP server may use it outside the mechanism: every PRIVATE part dropped
    (metrics removed, ``num_examples`` set to 1: DP weights users equally). ``delta`` stays for the mechanism;
    ``structure`` stays for the strategy to check against its public recomputation (DERIVED_PUBLIC)."""
    keep = {PUBLIC, TELEMETRY} | ({RECORD_ACCOUNTING} if keep_record_accounting else set())
    kept = {f.name: getattr(update, f.name) for f in fields(update)
            if REPLY_FIELDS[f.name] in (PUBLIC, MECHANISM, DERIVED_PUBLIC)}
    return Update(**kept, num_examples=1,
                  metrics={k: v for k, v in update.metrics.items() if metric_class(k) in keep})


def work_message_content(global_arrays: ArrayRecord, work: Work,
                         structure: dict[str, np.ndarray] | None = None) -> RecordDict:
    content = RecordDict({ARRAYS: global_arrays, CONFIG: work.to_config()})
    if structure:
        content[STRUCTURE] = to_array_record(structure)
    return content
