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
    out = "\n".join(HEADER) + "\n"
    for key in order:
        out += MARK.format(key) + "\n" + sections[key] + "\n"
    return out.rstrip("\n") + "\n"


def _label(eps) -> str:
    if isinstance(eps, str):
        return eps
    return "inf" if math.isinf(eps) else f"{eps:g}"


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(v, spec: str = ".2f", none: str = "—") -> str:
    if v is None:
        return none
    return f"{v:{spec}}"


def _ppl(v) -> str:
    return "—" if v is None else (f"{v:.2f}" if v < 1e4 else f"{v:.3g}")


def _cell(runs: list[dict], clip: float, cohort: int) -> dict:
    """The seeds' mean metrics of one (method, epsilon), the per-seed values and the noise/clipping diagnostics."""
    sigma = runs[0]["noise_multiplier"]
    d = runs[0].get("adapter_params")
    std = sigma * clip / cohort if sigma else 0.0
    medians = [_mean(r.get("update_norm_median") or []) for r in runs]
    maxes = [max(r["update_norm_max"]) for r in runs if r.get("update_norm_max")]
    ranks = sorted({k for r in runs for k in r["rank_metrics"]}, key=lambda k: int(k.rsplit("_r", 1)[-1]))
    return {
        "accuracy": _mean([r["accuracy"] for r in runs]),
        "perplexity": _mean([r["perplexity"] for r in runs]),
        "accuracy_per_seed": {str(r["seed"]): r["accuracy"] for r in runs},
        "perplexity_per_seed": {str(r["seed"]): r["perplexity"] for r in runs},
        "noise_multiplier": sigma,
        "epsilon_spent": max(r["epsilon_spent"] for r in runs),
        "rounds_run": runs[0]["rounds"],
        "rejected_replies": sum(r["rejected"] for r in runs),
        "noise_std_per_coordinate": std,
        "noise_norm_expected": std * math.sqrt(d) if d else None,
        "adapter_params": d,
        "update_norm_median": _mean(medians),
        "update_norm_max": max(maxes) if maxes else None,
        "rank_accuracy": {k: _mean([r["rank_metrics"].get(k) for r in runs]) for k in ranks},
        "wall_s_per_run": _mean([r["wall_s"] for r in runs]),
    }


def clip_sweep(args, rows: list[dict], sweep_rows: list[dict]) -> dict[str, list[dict]]:
    """Per method, per clip norm C (seed 0): epsilon 2 and clipping only (sigma 0) against that seed's
    non-private run; the main runs give the row at args.clip."""
    if not sweep_rows:
        return {}
    seed = min(r["seed"] for r in sweep_rows)
    pick = [r for r in rows if r["seed"] == seed]
    out: dict[str, list[dict]] = {}
    for m in sorted({r["method"] for r in sweep_rows}):
        mine = [r for r in pick if r["method"] == m]
        ref = next((r for r in mine if _label(r["epsilon_target"]) == "inf"), None)
        if ref is None:
            continue
        table = []
        for c in sorted({r.get("clip_norm", args.clip) for r in mine if _label(r["epsilon_target"]) != "inf"}):
            at = {_label(r["epsilon_target"]): r for r in mine if r.get("clip_norm", args.clip) == c}
            entry = {"clip_norm": c}
            for lab, key in (("2", "eps2"), ("inf-clip", "clip_only")):
                r = at.get(lab)
                if r is None:
                    continue
                entry[key] = {
                    "perplexity": r["perplexity"], "accuracy": r["accuracy"], "noise_multiplier": r["noise_multiplier"],
                    "noise_std_per_coordinate": r["noise_multiplier"] * c / args.cohort,
                    "update_norm_median": _mean(r.get("update_norm_median") or []),
                    "gain_kept_ppl": gain_kept(r["perplexity_base"], r["perplexity"], ref["perplexity"], True),
                    "gain_kept_acc": gain_kept(r["accuracy_base"], r["accuracy"], ref["accuracy"], False),
                }
            table.append(entry)
        out[m] = table
    return out


def summarize_real(args, rows: list[dict], total_s: float, planned: int) -> dict:
    """The ``by_model`` entry of one real-model run (partial when ``len(rows) < planned``)."""
    sweep_rows = [r for r in rows if r.get("clip_norm", args.clip) != args.clip]
    sweep = clip_sweep(args, rows, sweep_rows)
    rows = [r for r in rows if r.get("clip_norm", args.clip) == args.clip]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        groups.setdefault((r["method"], _label(r["epsilon_target"])), []).append(r)
    cells = {key: _cell(runs, args.clip, args.cohort) for key, runs in groups.items()}
    ppl_base = _mean([r["perplexity_base"] for r in rows])
    acc_base = _mean([r["accuracy_base"] for r in rows])
    methods = ["dp_lora", "dp_dylora"]

    def get(method, label, key):
        return cells.get((method, label), {}).get(key)

    kept: dict[str, dict] = {}
    for m in methods:
        seeds = sorted(set(get(m, "2", "perplexity_per_seed") or {}) & set(get(m, "inf", "perplexity_per_seed") or {}))
        kept[m] = {
            "ppl": gain_kept(ppl_base, get(m, "2", "perplexity"), get(m, "inf", "perplexity"), True),
            "acc": gain_kept(acc_base, get(m, "2", "accuracy"), get(m, "inf", "accuracy"), False),
            "ppl_per_seed": {s: gain_kept(ppl_base, get(m, "2", "perplexity_per_seed")[s],
                                          get(m, "inf", "perplexity_per_seed")[s], True) for s in seeds},
            "acc_per_seed": {s: gain_kept(acc_base, get(m, "2", "accuracy_per_seed")[s],
                                          get(m, "inf", "accuracy_per_seed")[s], False) for s in seeds},
        }
    lo, dy = get("dp_lora", "2", "accuracy_per_seed") or {}, get("dp_dylora", "2", "accuracy_per_seed") or {}
    both = sorted(set(lo) & set(dy))
    diff_per_seed = {s: 100 * (dy[s] - lo[s]) for s in both}
    diff = _mean(list(diff_per_seed.values()))
    gk = kept["dp_dylora"]["ppl"]
    first = next(iter(rows), {})
    labels = sorted({k[1] for k in cells},  # inf, then the epsilons high to low, then inf-clip
                    key=lambda x: (x == "inf-clip", x != "inf", -float(x.replace("inf-clip", "inf"))))
    return {
        "model": first.get("model_name"), "trained_and_evaluated": first.get("model_name"),
        "priced_as": None,  # this benchmark reports quality only: no simulated time, bytes or memory
        "population": args.population,
        "scale": {
            "scale": args.scale, "devices": args.population, "rounds": args.rounds, "expected_cohort": args.cohort,
            "local_steps": args.local_steps, "batch_windows": args.batch_size, "seq_len": first.get("seq_len"),
            "train_tokens_per_client_round": args.local_steps * (args.batch_size or 0) * (first.get("seq_len") or 0),
            "seeds": args.seeds, "eval_windows": args.eval_windows, "eval_tokens": first.get("eval_tokens"),
            "lr": args.lr, "lora_rank": args.rank, "target_modules": args.target_modules,
        },
        "accounting": {
            "library": "Opacus", "accountant": next((r["accountant"] for r in rows if r.get("accountant")), None),
            "sampling": "poisson", "sample_rate": args.cohort / args.population,
            "delta": 1.0 / args.population ** 1.1, "rounds": args.rounds, "clip_norm": args.clip,
            "sigma": {lab: next(get(m, lab, "noise_multiplier") for m in methods if (m, lab) in cells)
                      for lab in labels if not lab.startswith("inf")},
            "epsilon_spent": {lab: max(get(m, lab, "epsilon_spent") for m in methods if (m, lab) in cells)
                              for lab in labels if not lab.startswith("inf")},
            "noise": "N(0, (sigma C)^2) on the sum of clipped updates, divided by the expected cohort m",
        },
        "perplexity_base": ppl_base, "accuracy_base": acc_base,
        "per_epsilon": {lab: {m: cells[(m, lab)] for m in methods if (m, lab) in cells} for lab in labels},
        "gain_kept_eps2_ppl": gk, "gain_kept_eps2_acc": kept["dp_dylora"]["acc"],
        "gain_kept_eps2_ppl_per_seed": kept["dp_dylora"]["ppl_per_seed"],
        "gain_kept_eps2_acc_per_seed": kept["dp_dylora"]["acc_per_seed"],
        "gain_kept_eps2_by_method": kept,
        "dylora_minus_lora_acc_eps2": diff, "dylora_minus_lora_acc_eps2_per_seed": diff_per_seed,
        "targets": {"ppl_gain_kept_eps2_ge_50pct": None if not kept["dp_dylora"]["ppl_per_seed"]
                    else bool(gk is not None and gk >= PPL_KEPT_TARGET),
                    "dylora_ge_lora_acc_eps2": None if diff is None else bool(diff >= ACC_TARGET_POINTS)},
        "clip_sweep": sweep,
        "runs_done": len(rows) + len(sweep_rows), "runs_planned": planned,
        "complete": len(rows) + len(sweep_rows) >= planned,
        "total_wall_s": total_s,
    }


def render_real(out: dict, command: str) -> list[str]:
    """The real model's markdown section from its ``by_model`` entry."""
    sc, acc = out["scale"], out["accounting"]
    pct = _pct
    verdict = lambda ok: "not measured yet" if ok is None else ("**met**" if ok else "**not met**")  # noqa: E731
    partial = "" if out["complete"] else (f" **Partial: {out['runs_done']} of {out['runs_planned']} runs finished;"
                                           " the numbers below are those runs'.**")
    sigmas = ", ".join(f"epsilon {lab} -> sigma {_fmt(v, '.3f')}" for lab, v in acc["sigma"].items())
    lines = [
        f"## {out['model']} (the real model): trained and evaluated; nothing priced",
        "",
        f"**Scale:** {sc['devices']:,} devices = clients (one Shakespeare role each: data.min_lines=1, "
        f"data.roles_per_device=1), {sc['rounds']} rounds, expected cohort m = {sc['expected_cohort']} "
        f"(Poisson, q = {acc['sample_rate']:.3g}), {sc['local_steps']} local AdamW steps of {sc['batch_windows']} x "
        f"{sc['seq_len']} tokens ({sc['train_tokens_per_client_round']:,} tokens per client per round) at lr "
        f"{sc['lr']:g}, LoRA r={sc['lora_rank']} on {sc['target_modules']}, seeds {', '.join(map(str, sc['seeds']))} "
        f"(numbers are their means), test {sc['eval_windows']} windows = {sc['eval_tokens']:,} tokens of the "
        f"held-out plays (tempest, macbeth). Wall time {out['total_wall_s'] / 60:.1f} min on the shared 2-core "
        f"host.{partial}",
        "",
        f"**Accounting:** {acc['library']} {acc['accountant']} accountant, user-level DP-FedAvg: each client's whole "
        f"update clipped to C = {acc['clip_norm']:g}, {acc['noise']}; Poisson sampling q = {acc['sample_rate']:.3g}, "
        f"delta = 1/N^1.1 = {acc['delta']:.3g}, sigma calibrated for {acc['rounds']} rounds ({sigmas}). "
        "epsilon = inf: privacy=none (plain FedAvg, same method, rounds, cohort and seeds); inf-clip: DP-FedAvg "
        "with sigma 0 (Poisson cohort, equal weights, clipping; no noise).",
        "",
        f"`{command}` (in-process engine: the real ServerApp, strategies, DP layer and ClientApp handlers; only "
        "sampled clients compute). Definitions of the gains kept: benchmarks/dp.py's docstring.",
        "",
        f"Base (zero adapter): perplexity {_ppl(out['perplexity_base'])}, next-token accuracy "
        f"{_fmt(None if out['accuracy_base'] is None else 100 * out['accuracy_base'])}%.",
        "",
        "| epsilon | method | sigma | epsilon spent | ppl | ppl per seed | acc % | acc % per seed | pre-clip norm "
        "median / max | noise std per coordinate / expected noise norm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lab, by_method in out["per_epsilon"].items():
        for m, c in by_method.items():
            lines.append(
                f"| {lab} | {m} | {c['noise_multiplier']:.3f} | {_fmt(c['epsilon_spent'], '.3g')} | "
                f"{_ppl(c['perplexity'])} | {', '.join(_ppl(v) for v in c['perplexity_per_seed'].values())} | "
                f"{100 * c['accuracy']:.2f} | {', '.join(f'{100 * v:.2f}' for v in c['accuracy_per_seed'].values())} | "
                f"{_fmt(c['update_norm_median'], '.3g')} / {_fmt(c['update_norm_max'], '.3g')} | "
                f"{_fmt(c['noise_std_per_coordinate'], '.3g')} / {_fmt(c['noise_norm_expected'], '.3g')} |")
    kept = out["gain_kept_eps2_by_method"]
    seeds = lambda d: ", ".join(f"seed {s} {pct(v)}" for s, v in d.items()) or "—"  # noqa: E731
    diff = out["dylora_minus_lora_acc_eps2"]
    lines += [
        "",
        "Share of the non-private gain over the base kept at epsilon 2:",
        "",
        "| method | perplexity gain kept | per seed | accuracy gain kept | per seed |",
        "|---|---|---|---|---|",
        *[f"| {m} | {pct(k['ppl'])} | {seeds(k['ppl_per_seed'])} | {pct(k['acc'])} | {seeds(k['acc_per_seed'])} |"
          for m, k in kept.items()],
        "",
        f"- gain_kept_eps2_ppl (DP-DyLoRA) = **{pct(out['gain_kept_eps2_ppl'])}**, gain_kept_eps2_acc = "
        f"**{pct(out['gain_kept_eps2_acc'])}**",
        f"- dylora_minus_lora_acc_eps2 = **{_fmt(diff, '+.2f')}** points (per seed "
        + (", ".join(f"{v:+.2f}" for v in out["dylora_minus_lora_acc_eps2_per_seed"].values()) or "—") + ")",
        "",
        "Verdicts (targets fixed in benchmarks/dp.py before the run):",
        f"- DP-DyLoRA keeps >= 50% of the non-private perplexity gain at epsilon 2 with N = {out['population']:,}: "
        f"{verdict(out['targets']['ppl_gain_kept_eps2_ge_50pct'])} ({pct(out['gain_kept_eps2_ppl'])})",
        f"- DyLoRA >= LoRA at epsilon 2 (accuracy): {verdict(out['targets']['dylora_ge_lora_acc_eps2'])} "
        f"({_fmt(diff, '+.2f')} points)",
        "",
        *accuracy_reading(out),
        "",
        *clipping_vs_noise(out),
    ]
    if not out.get("clip_sweep"):
        lines += ["", "Clip-norm sweep: not run in this setting (`--clip-sweep 0.1,2,8` adds epsilon 2 and "
                  "clipping-only runs at each of those C, seed 0; `--scale full` includes it). The clipping-only "
                  "runs above separate clipping from noise at this C."]
    if out.get("clip_sweep"):
        lines += ["", "Clip-norm sweep (seed 0; gain kept against seed 0's non-private run; noise std = sigma C / m):",
                  "", "| method | C | clipping only (sigma 0): ppl / ppl gain kept / acc gain kept | epsilon 2: ppl / "
                  "ppl gain kept / acc gain kept | epsilon 2 noise std per coordinate | median pre-clip norm |",
                  "|---|---|---|---|---|---|"]
        for m, table in out["clip_sweep"].items():
            for e in table:
                co, two = e.get("clip_only"), e.get("eps2")
                cell = lambda x: "—" if x is None else (  # noqa: E731
                    f"{_ppl(x['perplexity'])} / {pct(x['gain_kept_ppl'])} / {pct(x['gain_kept_acc'])}")
                lines.append(f"| {m} | {e['clip_norm']:g} | {cell(co)} | {cell(two)} | "
                             f"{_fmt(two and two['noise_std_per_coordinate'], '.3g')} | "
                             f"{_fmt((two or co or {}).get('update_norm_median'), '.3g')} |")
        lines += ["", *sweep_reading(out["clip_sweep"])]
    ranks = {lab: by["dp_dylora"]["rank_accuracy"] for lab, by in out["per_epsilon"].items()
             if "dp_dylora" in by and by["dp_dylora"]["rank_accuracy"]}
    if ranks:
        keys = sorted({k for r in ranks.values() for k in r}, key=lambda k: int(k.rsplit("_r", 1)[-1]))
        lines += ["", "DP-DyLoRA accuracy (%) of the final adapter truncated to each rank:", "",
                  "| epsilon | " + " | ".join(f"rank {k.rsplit('_r', 1)[-1]}" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines += [f"| {lab} | " + " | ".join(_fmt(None if r.get(k) is None else 100 * r[k]) for k in keys) + " |"
                  for lab, r in ranks.items()]
    return lines


def sweep_reading(sweep: dict) -> list[str]:
    """What the clip-norm sweep says, per method: the best epsilon-2 gain kept over C, and whether a C that clips
    less (more gain kept without noise) is then lost to noise."""
    lines = []
    for m, table in sweep.items():
        two = [(e["clip_norm"], e["eps2"]["gain_kept_ppl"]) for e in table if e.get("eps2")]
        clip = [(e["clip_norm"], e["clip_only"]["gain_kept_ppl"]) for e in table if e.get("clip_only")]
        if not two or not clip:
            continue
        best_c, best = max(two, key=lambda x: x[1])
        free_c, free = max(clip, key=lambda x: x[1])
        lines.append(f"- {m}: the best epsilon-2 run keeps {best:.1%} of the perplexity gain (C = {best_c:g}); without "
                     f"noise, C = {free_c:g} would keep {free:.1%}. "
                     + ("Clipping is not the only cost: the C that clips least is the one the noise ruins (noise on "
                        "the mean grows as sigma C / m), so at this cohort no clip norm keeps the gain."
                        if free > best + 0.25 else "Clipping, not noise, bounds what is kept at every C swept."))
    return lines


def clipping_vs_noise(out: dict) -> list[str]:
    """What the clipping-only runs and the norms say about where the private runs lose their gain."""
    pe, base = out["per_epsilon"], out["perplexity_base"]
    lines = ["Clipping or noise?"]
    for m in ("dp_lora", "dp_dylora"):
        inf, clip, two = (pe.get(lab, {}).get(m) for lab in ("inf", "inf-clip", "2"))
        if not (inf and two):
            continue
        text = f"- {m}: non-private ppl {_ppl(inf['perplexity'])}, epsilon 2 {_ppl(two['perplexity'])} " \
               f"({pct_kept(base, two['perplexity'], inf['perplexity'])} of the gain kept)"
        text += (f". Median pre-clip update norm {_fmt(two['update_norm_median'], '.3g')} vs C = "
                 f"{out['accounting']['clip_norm']:g}; the noise added to the mean has std "
                 f"{_fmt(two['noise_std_per_coordinate'], '.3g')} per coordinate, an expected norm of "
                 f"{_fmt(two['noise_norm_expected'], '.3g')} over {two['adapter_params']:,} coordinates, against a "
                 f"mean of clipped updates of norm <= C = {out['accounting']['clip_norm']:g}.")
        seed = next(iter(clip["perplexity_per_seed"]), None) if clip else None
        if seed in inf["perplexity_per_seed"] and seed in two["perplexity_per_seed"]:
            ref, p2 = inf["perplexity_per_seed"][seed], two["perplexity_per_seed"][seed]
            k_clip = gain_kept(base, clip["perplexity_per_seed"][seed], ref, True)
            k_two = gain_kept(base, p2, ref, True)
            text += (f" Seed {seed}: non-private {_ppl(ref)}, clipping only (sigma 0) "
                     f"{_ppl(clip['perplexity_per_seed'][seed])} ({_pct(k_clip)} kept), epsilon 2 {_ppl(p2)} "
                     f"({_pct(k_two)} kept)")
            if k_clip is not None and k_two is not None:
                text += (f": clipping alone loses {_pct(1 - k_clip)} of the non-private gain, the epsilon-2 noise "
                         f"a further {_pct(k_clip - k_two)}.")
        lines.append(text)
    if len(lines) == 1:
        return []
    lines += ["- In the DP runs the largest pre-clip update is up to ~10x the median: a few sampled clients' updates "
              "are far larger than the rest; clipping bounds each at C whatever its size."
              if any(c.get("update_norm_max") and c.get("update_norm_median") and
                     c["update_norm_max"] > 5 * c["update_norm_median"] for by in pe.values() for c in by.values())
              else ""]
    return [line for line in lines if line]


def accuracy_reading(out: dict) -> list[str]:
    """How large an accuracy difference the test set can resolve."""
    p, n = out["accuracy_base"], out["scale"]["eval_tokens"]
    if p is None or not n:
        return []
    se = 100 * math.sqrt(p * (1 - p) / n)
    text = (f"Accuracy resolution: one accuracy on {n:,} test tokens has a binomial standard error of about "
            f"{se:.2f} points (a paired difference of two models on the same tokens, less).")
    at2 = out["per_epsilon"].get("2", {})
    if len(at2) == 2 and all(abs(c["accuracy"] - p) < 0.01 for c in at2.values()):
        text += (" At epsilon 2 both methods end within one point of the base model's accuracy, so DyLoRA >= LoRA "
                 "compares two adapters that learned little.")
    return [text]


def _pct(v) -> str:
    return "—" if v is None else ("-inf" if v == -math.inf else f"{100 * v:.1f}%")


def pct_kept(base, private, nonprivate) -> str:
    return _pct(gain_kept(base, private, nonprivate, True))


def write_real(args, rows: list[dict], total_s: float, planned: int, docs: Path) -> dict:
    """Rewrite the real model's section of dp.md and its ``by_model`` entry of dp.json (the rest is kept)."""
    import json
    import sys

    out = summarize_real(args, rows, total_s, planned)
    command = "python -m benchmarks.dp" + "".join(f" {a}" for a in sys.argv[1:] if a not in ("--rewrite", "--resume"))
    lines = render_real(out, command)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "dp.md").write_text(merge_sections(docs / "dp.md", args.model, lines))
    path = docs / "dp.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("by_model", {})[args.model] = out
    path.write_text(json.dumps(data, indent=2, default=lambda x: None) + "\n")
    return out
