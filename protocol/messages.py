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

from dataclasses import dataclass, field

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


def work_message_content(global_arrays: ArrayRecord, work: Work,
                         structure: dict[str, np.ndarray] | None = None) -> RecordDict:
    content = RecordDict({ARRAYS: global_arrays, CONFIG: work.to_config()})
    if structure:
        content[STRUCTURE] = to_array_record(structure)
    return content
