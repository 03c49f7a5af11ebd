"""How `show` draws one feature in the terminal."""

from __future__ import annotations

from typing import Any


def _clean(token: str) -> str:
    # Control characters would garble the terminal; show them as escapes.
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in token)


def render_feature(feature: Any, n_acts: int) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console()
    console.print(Text(str(feature.id), style="bold"), f"  maxAct≈{feature.max_act_approx}  frac_nonzero={feature.frac_nonzero}")
    if feature.explanations:
        for e in feature.explanations:
            scores = ", ".join(f"{s.explanation_score_type_name}={s.value}" for s in e.scores if s.value is not None)
            console.print(f"  • {e.description}  [{e.explanation_model_name or '?'}]" + (f"  ({scores})" if scores else ""), markup=False)
    else:
        console.print("  (no explanations)")
    console.print(Text("Top activations", style="bold"))
    ranked = sorted(feature.activations, key=lambda a: -(a.max_value if a.max_value is not None else float("-inf")))
    for act in ranked[:n_acts]:
        line = Text(f"  {act.max_value if act.max_value is not None else float('nan'):7.3f}  ")
        peak = act.max_value_token_index
        lo = max(0, (peak or 0) - 12)
        for i, tok in enumerate(act.tokens[lo : lo + 24], start=lo):
            line.append(_clean(tok), style="bold black on yellow" if i == peak else None)
        console.print(line)
    if feature.pos_str or feature.neg_str:
        pos = ", ".join(f"{_clean(s)} {v:.2f}" for s, v in zip(feature.pos_str[:8], feature.pos_values[:8]) if v is not None)
        neg = ", ".join(f"{_clean(s)} {v:.2f}" for s, v in zip(feature.neg_str[:8], feature.neg_values[:8]) if v is not None)
        console.print(Text("Top logits:    ", style="bold green") + Text(pos))
        console.print(Text("Bottom logits: ", style="bold red") + Text(neg))
    if feature.topk_cos_sim_indices:
        near = ", ".join(f"{i} ({v:.2f})" for i, v in zip(feature.topk_cos_sim_indices[1:6], feature.topk_cos_sim_values[1:6]) if v is not None)
        console.print(Text("Decoder neighbours: ", style="bold") + Text(near))
