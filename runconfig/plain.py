"""Settings as plain, picklable data (what travels to Ray workers and clients, and into MLflow), and back.

Imports only :mod:`runconfig.schema` of the project, so a client or a tracker can read settings without the
validation (or anything it imports).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from omegaconf import OmegaConf

from runconfig.schema import Settings


def to_plain(settings: Settings) -> dict[str, Any]:
    """Plain, picklable data. Choices stay :class:`enum.StrEnum` members: ``str`` subclasses, so JSON, MLflow and
    comparisons with strings see their values."""
    return asdict(settings)


def from_plain(data: dict[str, Any]) -> Settings:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Settings), data))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out
