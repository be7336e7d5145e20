"""The real-model section of docs/benchmarks/dp.{md,json}: gain kept at epsilon 2, DyLoRA - LoRA, the verdicts.

Definitions and targets (gain kept, DyLoRA - LoRA, the two targets): benchmarks/dp.py's docstring, fixed
before the SmolLM2-135M run.

The markdown file holds one section per model, each between ``<!-- section: NAME -->`` markers, so a run of one
model rewrites its own section and keeps the other's (the real model first, the proxy second).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

SECTION_ORDER = ["smollm2-135m", "tiny-llama"]
MARK = "<!-- section: {} -->"
HEADER = [
    "# DP-LoRA vs DP-DyLoRA (user-level DP-FedAvg)",
    "",
    "Two sections: the real SmolLM2-135M-Instruct (fine-tuned and evaluated; nothing is priced in this "
    "benchmark), then the 3.4M tiny-llama proxy the first measurements used. `python -m benchmarks.dp "
    "[--model smollm2-135m|tiny-llama]` rewrites its own section.",
    "",
]
ACC_TARGET_POINTS = 0.0
PPL_KEPT_TARGET = 0.5


def gain_kept(base: float, private: float, nonprivate: float, lower_is_better: bool) -> float | None:
    """The share of the non-private gain over the base that the private run keeps (module docstring)."""
    if any(v is None or math.isnan(v) for v in (base, private, nonprivate)):
        return None
    if not (math.isfinite(base) and math.isfinite(nonprivate)):
        return None
    whole = base - nonprivate if lower_is_better else nonprivate - base
    if whole <= 0:
        return None
    kept = base - private if lower_is_better else private - base
    return kept / whole


def merge_sections(path: Path, name: str, lines: list[str]) -> str:
    """``path``'s text with section ``name`` replaced by ``lines`` (other sections kept, in SECTION_ORDER)."""
    text = path.read_text() if path.exists() else ""
    sections: dict[str, str] = {}
    parts = re.split(r"^<!-- section: ([\w.-]+) -->\n", text, flags=re.M)
    for key, body in zip(parts[1::2], parts[2::2]):
        sections[key] = body.rstrip("\n") + "\n"
    sections[name] = "\n".join(lines).rstrip("\n") + "\n"
    order = [k for k in SECTION_ORDER if k in sections] + [k for k in sections if k not in SECTION_ORDER]
    out = "\n".join(HEADER)
    for key in order:
        out += MARK.format(key) + "\n" + sections[key] + "\n"
    return out.rstrip("\n") + "\n"
