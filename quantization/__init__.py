"""Weight/activation quantization for LLaMA-family linear layers (ZeroQAT's quantizer, OmniQuant-style)."""
