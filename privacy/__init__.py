"""Differential privacy for the fleet (docs/privacy.md).

plan (config -> checked PrivacyPlan), accounting (Opacus RDP/PRV, fixed-size via dp_accounting, budget),
sampling (Poisson / fixed cohorts), noise (seeded or CSPRNG Gaussians), mechanism (clip + noise + fixed
denominator over any update dict), dp_fedavg (the user-level DP mixin for any strategy), client_side
(client-side noise shares), dylora (nested LoRA slices on PEFT adapters). The record-level DP-SGD trainer is client/trainers/lora_dpsgd.py.
Flower's DP wrappers and mods are not used: they assume identical update shapes, fixed-size `sample_nodes`
cohorts and either no accounting across rounds or none with sampling amplification.
"""
