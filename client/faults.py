"""TESTING / CHAOS ONLY: faults a ClientApp injects into its own replies (``faults.inject`` in the config).

``faults.inject: {device_index: kind}`` makes that device misbehave on every training round, so tests and
chaos runs exercise the server's failure handling through a real simulation (docs/faults.md). Never set it
in a real deployment. Kinds:

``raise``          the handler raises before training (the server sees an error reply)
``nan``            one tensor of the delta is NaN
``inf``            one tensor of the delta is +Inf
``shape``          one tensor of the delta loses its last row
``keys``           one tensor of the delta is renamed
``dtype``          the delta is float64
``norm``           the delta is scaled by 1e6
``stale``          the update claims the previous round
``stale_version``  the update claims another global model version
``oversize``       an extra 8 MiB array rides along (set validation.max_message_mb below that)
``slow``           the device reports a 1e6 s stall (``stall_s``; late against any sane deadline under every
                   clock, however fast the host or the priced work)
"""

from __future__ import annotations

import numpy as np

from protocol.messages import Update

KINDS = ("raise", "nan", "inf", "shape", "keys", "dtype", "norm", "stale", "stale_version", "oversize", "slow")


class InjectedFault(RuntimeError):
    """Raised by a device told to fail (``faults.inject: {i: raise}``)."""


def injected_kind(plain_settings: dict, device_index: int) -> str | None:
    inject = (plain_settings.get("faults") or {}).get("inject") or {}
    return next((str(kind) for idx, kind in inject.items() if int(idx) == device_index), None)


def before_training(kind: str | None, device_index: int) -> None:
    if kind == "raise":
        raise InjectedFault(f"device {device_index}: injected fault 'raise' (faults.inject)")


def corrupt(kind: str | None, update: Update) -> Update:
    """The update as a device with this fault would send it."""
    if kind is None or kind == "raise":
        return update
    delta = dict(update.delta)
    first = sorted(delta)[0]
    if kind == "nan":
        delta[first] = np.full_like(delta[first], np.nan)
    elif kind == "inf":
        delta[first] = np.full_like(delta[first], np.inf)
    elif kind == "shape":
        delta[first] = delta[first][:-1]
    elif kind == "keys":
        delta[first + ".renamed"] = delta.pop(first)
    elif kind == "dtype":
        delta = {k: v.astype(np.float64) for k, v in delta.items()}
    elif kind == "norm":
        delta = {k: (v * 1e6).astype(v.dtype) for k, v in delta.items()}
    elif kind == "stale":
        update.server_round -= 1
    elif kind == "stale_version":
        update.model_version += 1000
    elif kind == "oversize":
        delta["padding"] = np.zeros(8 * 2**20 // 4, dtype=np.float32)
    elif kind == "slow":
        update.metrics["stall_s"] = 1e6
    else:
        raise ValueError(f"faults.inject: unknown kind '{kind}'; known: {', '.join(KINDS)}")
    update.delta = delta
    return update
