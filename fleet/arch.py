"""The shape of a decoder-only LM, as far as cost is concerned, and what a pruned device keeps of it.

A fleet can be *priced as* a model other than the one it trains (``cost=`` in conf/): learning runs on the
small proxy, while time, bytes and memory are those of the deployment model (shape-only configs, no weights).
Pruning is carried over by level: a device pruned to level ``s`` keeps, of *any* model, the heads and channels
:func:`pruning.structure.kept_counts` gives at ``s`` (the rule FedSpine's on-device pruning uses).
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.structure import kept_counts

# LoRA target -> (in, out) dimension kinds: h hidden, q kept query heads * d, g kept kv heads * d, c channels
PROJECTIONS = {
    "q_proj": ("h", "q"), "k_proj": ("h", "g"), "v_proj": ("h", "g"), "o_proj": ("q", "h"),
    "gate_proj": ("h", "c"), "up_proj": ("h", "c"), "down_proj": ("c", "h"),
}


@dataclass(frozen=True)
class Kept:
    """What one decoder layer keeps: query heads, key/value heads, MLP channels."""

    q_heads: int
    kv_heads: int
    channels: int


@dataclass(frozen=True)
class ArchShape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # q/k/v biases (Qwen2)

    @classmethod
    def from_hf_config(cls, config, name: str) -> ArchShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(name=name, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                   num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                   num_kv_heads=config.num_key_value_heads, head_dim=head_dim, vocab_size=config.vocab_size,
                   tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
                   attention_bias=bool(getattr(config, "attention_bias", False)))

    def dense(self) -> Kept:
        return Kept(self.num_heads, self.num_kv_heads, self.intermediate_size)

    def kept(self, level: float, head_rule: str = "within_groups") -> Kept:
        """What every layer keeps at pruning level ``level`` (0: dense)."""
        if level <= 0:
            return self.dense()
        heads, groups, channels = kept_counts(self.num_heads, self.num_kv_heads, self.intermediate_size, level,
                                              head_rule)
        return Kept(heads, groups, channels)

    def dims(self, kept: Kept) -> dict[str, int]:
        d = self.head_dim
        return {"h": self.hidden_size, "q": kept.q_heads * d, "g": kept.kv_heads * d, "c": kept.channels}

    def projections(self, kept: Kept) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear of a layer that keeps ``kept``."""
        size = self.dims(kept)
        return {name: (size[i], size[o]) for name, (i, o) in PROJECTIONS.items()}

    def layer_params(self, kept: Kept) -> int:
        """Weights of one decoder layer (linears, their biases and the two norms)."""
        linears = sum(i * o for i, o in self.projections(kept).values())
        bias = (kept.q_heads + 2 * kept.kv_heads) * self.head_dim if self.attention_bias else 0
        return linears + bias + 2 * self.hidden_size

    def embedding_params(self) -> int:
        """Input embedding, final norm and (when untied) the LM head."""
        embed = self.vocab_size * self.hidden_size
        return embed * (1 if self.tie_word_embeddings else 2) + self.hidden_size

    def num_params(self, kept: Kept | None = None) -> int:
        return self.embedding_params() + self.num_layers * self.layer_params(kept or self.dense())

    def lora_params(self, kept: Kept, rank: int, targets: list[str]) -> int:
        """LoRA parameters (A: rank x in, B: out x rank) over every layer's targeted linears."""
        proj = self.projections(kept)
        return self.num_layers * sum(rank * (proj[t][0] + proj[t][1]) for t in targets if t in proj)
