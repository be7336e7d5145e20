"""ZeroQAT: zeroth-order (forward-only) quantization-aware fine-tuning, shared by clients and the server."""
