"""One device's task for one round, as a plain dataclass (no Flower import: the trainers, and the GPU
benchmark on a machine without flwr, use it). ``to_config`` builds Flower's ConfigRecord on demand."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Work:
    """One device's task for one round."""

    server_round: int
    device_index: int
    trainer: str
    local_steps: int
    batch_size: int
    lr: float
    rank: int
    seed: int
    extra: dict[str, float | int | str | bool] = field(default_factory=dict)  # method-specific knobs
    model_version: int = 0  # which global adapter this work starts from (echoed back; stale replies rejected)

    def to_config(self):
        from flwr.app import ConfigRecord

        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data.update({f"extra.{k}": v for k, v in self.extra.items()})
        return ConfigRecord(data)

    @classmethod
    def from_config(cls, record) -> Work:
        names = {f.name for f in fields(cls)} - {"extra"}
        base = {k: record[k] for k in names if k in record}
        extra = {k[len("extra.") :]: v for k, v in record.items() if k.startswith("extra.")}
        return cls(**base, extra=extra)
