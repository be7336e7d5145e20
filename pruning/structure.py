"""Which heads and channels a pruned model keeps, and LoRA tensors between full and pruned coordinates.

Pruning rule for grouped-query attention (documented in docs/fedspine.md): query heads are removed *within*
key/value groups, the same number in every group, so every group keeps ``m`` query heads and the model stays a
valid GQA model (``num_key_value_groups = m``). With ``head_rule="whole_groups"`` whole KV groups are removed
together with their query heads instead (k/v shrink too). Every layer keeps the same number of heads and
channels (which ones differs per layer), so the pruned model is described by an ordinary config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from runconfig.choices import HeadRule

HEAD_RULES = tuple(HeadRule)
_KEY = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_(A|B)\.")
# which dimension of a projection's weight (out, in) is indexed by heads / kv groups / channels
_OUT_HEADS, _OUT_GROUPS, _IN_HEADS = {"q_proj"}, {"k_proj", "v_proj"}, {"o_proj"}
_OUT_CHANNELS, _IN_CHANNELS = {"gate_proj", "up_proj"}, {"down_proj"}


@dataclass(frozen=True)
class Dims:
    """The dense model's prunable dimensions."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @classmethod
    def of(cls, config) -> Dims:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, head_dim,
                   config.intermediate_size)

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass
class Structure:
    """Kept query heads (``heads[l]``, bool over the dense heads) and MLP channels per layer."""

    heads: list[np.ndarray]
    channels: list[np.ndarray]

    @classmethod
    def dense(cls, dims: Dims) -> Structure:
        return cls([np.ones(dims.num_heads, bool) for _ in range(dims.num_layers)],
                   [np.ones(dims.intermediate_size, bool) for _ in range(dims.num_layers)])

    # ------------------------------------------------------------------ wire format (uint8 masks)
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (h, c) in enumerate(zip(self.heads, self.channels)):
            out[f"layers.{i}.heads"] = h.astype(np.uint8)
            out[f"layers.{i}.channels"] = c.astype(np.uint8)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], dims: Dims) -> Structure:
        if not arrays:
            return cls.dense(dims)
        heads = [np.asarray(arrays[f"layers.{i}.heads"]).astype(bool) for i in range(dims.num_layers)]
        channels = [np.asarray(arrays[f"layers.{i}.channels"]).astype(bool) for i in range(dims.num_layers)]
        s = cls(heads, channels)
        s.check(dims)
        return s

    # ------------------------------------------------------------------ derived
    def groups(self, layer: int, dims: Dims) -> np.ndarray:
        """KV groups still in use (a group with no kept query head is removed)."""
        return self.heads[layer].reshape(dims.num_kv_heads, dims.group_size).any(axis=1)

    def check(self, dims: Dims) -> None:
        """Raise unless every layer keeps the same head/channel counts and the same count per kept group."""
        counts = {(int(h.sum()), int(c.sum())) for h, c in zip(self.heads, self.channels)}
        if len(counts) != 1:
            raise ValueError(f"layers keep different numbers of heads/channels: {sorted(counts)}")
        for layer, h in enumerate(self.heads):
            per_group = h.reshape(dims.num_kv_heads, dims.group_size).sum(axis=1)
            if len(set(per_group[per_group > 0].tolist())) != 1:
                raise ValueError(f"layer {layer}: kept query heads per KV group differ: {per_group.tolist()}")

    def kept_heads(self) -> int:
        return int(self.heads[0].sum())

    def kept_groups(self, dims: Dims) -> int:
        return int(self.groups(0, dims).sum())

    def kept_channels(self) -> int:
        return int(self.channels[0].sum())

    def level(self, dims: Dims) -> float:
        """The pruning level the structure was selected at (share of MLP channels removed)."""
        return 1.0 - self.kept_channels() / dims.intermediate_size

    def sparsity(self, dims: Dims, hidden_size: int) -> float:
        """Share of the prunable (decoder-layer linear) parameters removed."""
        d, hid = dims.head_dim, hidden_size

        def params(heads: int, groups: int, channels: int) -> int:
            return 2 * hid * heads * d + 2 * hid * groups * d + 3 * hid * channels

        full = params(dims.num_heads, dims.num_kv_heads, dims.intermediate_size)
        return 1.0 - params(self.kept_heads(), self.kept_groups(dims), self.kept_channels()) / full

    # ------------------------------------------------------------------ indices of a LoRA tensor
    def indices(self, key: str, dims: Dims) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(kept rows of the weight's out dim, kept cols of its in dim) for a LoRA key; None = all kept."""
        m = _KEY.search(key)
        if not m:
            return None, None
        layer, proj = int(m.group(1)), m.group(3)
        d = dims.head_dim
        heads = np.flatnonzero(self.heads[layer])
        head_rows = (heads[:, None] * d + np.arange(d)).ravel()
        groups = np.flatnonzero(self.groups(layer, dims))
        group_rows = (groups[:, None] * d + np.arange(d)).ravel()
        channels = np.flatnonzero(self.channels[layer])
        out = head_rows if proj in _OUT_HEADS else group_rows if proj in _OUT_GROUPS else \
            channels if proj in _OUT_CHANNELS else None
        inn = head_rows if proj in _IN_HEADS else channels if proj in _IN_CHANNELS else None
        return out, inn


def full_shape(key: str, dims: Dims, hidden_size: int, rank: int) -> tuple[int, int]:
    """The dense model's shape of a LoRA factor at ``rank`` (A: (rank, in), B: (out, rank))."""
    m = _KEY.search(key)
    if not m:
        raise ValueError(f"not a LoRA key of a decoder layer: {key}")
    proj, d = m.group(3), dims.head_dim
    size = {"h": hidden_size, "q": dims.num_heads * d, "g": dims.num_kv_heads * d, "c": dims.intermediate_size}
    kinds = {"q_proj": "hq", "k_proj": "hg", "v_proj": "hg", "o_proj": "qh", "gate_proj": "hc", "up_proj": "hc",
             "down_proj": "ch"}[proj]
    return (rank, size[kinds[0]]) if m.group(4) == "A" else (size[kinds[1]], rank)


def lora_index(key: str, structure: Structure, dims: Dims, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Row and column indices of a LoRA factor's sub-tensor inside the full-coordinate tensor.

    ``lora_A`` is (rank, in): first ``rank`` rows, kept input columns. ``lora_B`` is (out, rank): kept output
    rows, first ``rank`` columns (HetLoRA-style rank truncation: rank ``r`` keeps the leading components).
    """
    out, inn = structure.indices(key, dims)
    if ".lora_A." in key:
        return np.arange(rank), inn
    if ".lora_B." in key:
        return out, np.arange(rank)
    return None


def _ix(rows, cols, shape):
    rows = np.arange(shape[0]) if rows is None else rows
    cols = np.arange(shape[1]) if cols is None else cols
    return np.ix_(rows, cols)


def slice_to(full: dict[str, np.ndarray], structure: Structure, dims: Dims, rank: int) -> dict[str, np.ndarray]:
    """Full-coordinate LoRA tensors (max rank) -> a pruned sub-model's tensors at ``rank``."""
    out = {}
    for key, value in full.items():
        rows, cols = lora_index(key, structure, dims, rank)
        out[key] = np.ascontiguousarray(value[_ix(rows, cols, value.shape)])
    return out


def scatter_from(sub: dict[str, np.ndarray], structure: Structure, dims: Dims, rank: int,
                 full_shapes: dict[str, tuple]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A sub-model's tensors -> (full-coordinate tensors with zeros elsewhere, 0/1 holder masks)."""
    values, holders = {}, {}
    for key, shape in full_shapes.items():
        rows, cols = lora_index(key, structure, dims, rank)
        ix = _ix(rows, cols, shape)
        v, h = np.zeros(shape, np.float64), np.zeros(shape, np.float64)
        if sub[key].shape != v[ix].shape:
            raise ValueError(f"{key}: sub-tensor {sub[key].shape} does not fit structure/rank {v[ix].shape}")
        v[ix] = sub[key]
        h[ix] = 1.0
        values[key], holders[key] = v, h
    return values, holders


def kept_counts(num_heads: int, num_kv_heads: int, intermediate_size: int, sparsity: float,
                head_rule: str = "within_groups") -> tuple[int, int, int]:
    """(query heads, kv heads, MLP channels) one layer keeps at pruning level ``sparsity``, pruned from dense.

    ``within_groups`` keeps ``max(1, round(g*(1-s)))`` query heads in every KV group (g = group size);
    ``whole_groups`` keeps ``max(1, round(kv*(1-s)))`` whole groups; channels: ``max(1, round(I*(1-s)))``.
    The same rule prices a pruned device on any model (fleet/arch.py).
    """
    if head_rule not in HEAD_RULES:
        raise ValueError(f"head_rule: unknown '{head_rule}'; known: {', '.join(HEAD_RULES)}")
    g = num_heads // num_kv_heads
    channels = max(1, round(intermediate_size * (1 - sparsity)))
    if head_rule == "within_groups":
        return max(1, round(g * (1 - sparsity))) * num_kv_heads, num_kv_heads, channels
    groups = max(1, round(num_kv_heads * (1 - sparsity)))
    return groups * g, groups, channels


def select(scores_heads: list[np.ndarray], scores_channels: list[np.ndarray], current: Structure, dims: Dims,
           sparsity: float, head_rule: str = "within_groups") -> Structure:
    """The structure at ``sparsity`` keeping the most important heads/channels among those still kept.

    Counts: :func:`kept_counts` (a whole group's importance is the sum over its heads). Never re-grows a
    removed head or channel.
    """
    q_kept, kv_kept, c_kept = kept_counts(dims.num_heads, dims.num_kv_heads, dims.intermediate_size, sparsity,
                                          head_rule)
    g, kv = dims.group_size, dims.num_kv_heads
    heads, channels = [], []
    for layer in range(dims.num_layers):
        cur_h = current.heads[layer]
        score = np.where(cur_h, scores_heads[layer], -np.inf).reshape(kv, g)
        keep_h = np.zeros((kv, g), bool)
        if head_rule == "within_groups":
            live = current.groups(layer, dims)
            m = min(q_kept // kv, int(cur_h.reshape(kv, g).sum(1).max()))
            for grp in np.flatnonzero(live):
                keep_h[grp, np.argsort(-score[grp], kind="stable")[:m]] = True
        else:
            per_group = np.where(np.isfinite(score), score, 0).sum(1)
            live = current.groups(layer, dims)
            n = min(kv_kept, int(live.sum()))
            order = np.argsort(-np.where(live, per_group, -np.inf), kind="stable")[:n]
            keep_h[order] = cur_h.reshape(kv, g)[order]
        heads.append(keep_h.ravel())
        cur_c = current.channels[layer]
        n_c = min(c_kept, int(cur_c.sum()))
        keep_c = np.zeros_like(cur_c)
        keep_c[np.argsort(-np.where(cur_c, scores_channels[layer], -np.inf), kind="stable")[:n_c]] = True
        channels.append(keep_c)
    s = Structure(heads, channels)
    s.check(dims)
    return s
