"""``WxAy`` notation: x weight bits, y activation bits (``W4A8``; ``A16`` means activations stay in float)."""

from __future__ import annotations

import re
from dataclasses import dataclass

WEIGHT_BITS = (2, 3, 4, 8)
ACT_BITS = (4, 8, 16)
_PATTERN = re.compile(r"^W(\d+)A(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class QuantSpec:
    w_bits: int
    a_bits: int
    group_size: int  # weights per scale/zero along the input dim; 0 = one per output channel

    @property
    def quantize_activations(self) -> bool:
        return self.a_bits < 16

    def label(self) -> str:
        g = f"g{self.group_size}" if self.group_size else "per-channel"
        return f"W{self.w_bits}A{self.a_bits} {g}"


def parse_wa(text: str, group_size: int = 0) -> QuantSpec:
    """``"W4A8"`` -> QuantSpec(4, 8, group_size); ValueError naming the allowed bits otherwise."""
    match = _PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"'{text}' is not WxAy notation (e.g. W4A8, W2A16)")
    w, a = int(match.group(1)), int(match.group(2))
    if w not in WEIGHT_BITS:
        raise ValueError(f"weight bits {w} in '{text}': supported {WEIGHT_BITS}")
    if a not in ACT_BITS:
        raise ValueError(f"activation bits {a} in '{text}': supported {ACT_BITS}")
    if group_size < 0:
        raise ValueError(f"group size must be >= 0 (0 = per channel), got {group_size}")
    return QuantSpec(w, a, group_size)
