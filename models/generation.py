"""What the run learned, readable: the base model's and the fine-tuned model's continuations of fixed prompts.

The prompts are the openings of a few speeches of the held-out plays (the global test set, seen by no client),
chosen evenly over it so every run of one data configuration uses the same ones. Decoding is greedy and short
(``tracking.generation_tokens``), so it costs seconds even on the 135M model on a CPU.
"""

from __future__ import annotations

import torch

from textdata.corpus import Corpus

PROMPT_TOKENS = 24


def held_out_prompts(corpus: Corpus, count: int, prompt_tokens: int = PROMPT_TOKENS) -> list[str]:
    """The openings of ``count`` speeches spread evenly over the held-out plays (speeches of 2+ lines)."""
    tok = corpus.tokenizer
    speeches = [s for s in tok.decode(corpus.global_test_ids.tolist()).split("\n\n") if s.count("\n") >= 1]
    if not speeches or count <= 0:
        return []
    picks = sorted({round(i * (len(speeches) - 1) / max(count - 1, 1)) for i in range(count)})
    return [tok.decode(tok(speeches[i], add_special_tokens=False)["input_ids"][:prompt_tokens]) for i in picks]


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy continuation of ``prompt`` (the new text only)."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def side_by_side(peft_model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict[str, str]]:
    """For each prompt: the base model's continuation (adapter disabled) and the fine-tuned one's."""
    was_training = peft_model.training
    peft_model.eval()
    rows = []
    for prompt in prompts:
        with peft_model.disable_adapter():
            base = greedy(peft_model, tokenizer, prompt, max_new_tokens)
        rows.append({"prompt": prompt, "base": base, "fine_tuned": greedy(peft_model, tokenizer, prompt, max_new_tokens)})
    peft_model.train(was_training)
    return rows


def to_markdown(rows: list[dict[str, str]], model_name: str, max_new_tokens: int) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = [f"# Continuations of held-out-play prompts: {model_name}, base vs fine-tuned",
             "", f"Greedy decoding, {max_new_tokens} new tokens; prompts open speeches of the global test plays.", "",
             "| prompt | base model | fine-tuned (final adapter) |", "|---|---|---|"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['base'])} | {cell(r['fine_tuned'])} |" for r in rows]
    return "\n".join(lines) + "\n"
