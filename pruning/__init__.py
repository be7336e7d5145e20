"""Structured pruning of LLaMA-family models (Llama, Qwen2, Mistral) for FedSpine.

* :mod:`pruning.structure` -- which attention heads and MLP channels a device keeps (masks that travel with
  its update), and how LoRA tensors map between the full model and a pruned sub-model.
* :mod:`pruning.importance` -- LoRAPrune-style importance from the LoRA factor gradients (no base gradients).
* :mod:`pruning.prune` -- physically shrinking the model's matrices and its config to a structure.
"""
