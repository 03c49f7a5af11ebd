"""How `show` draws one feature: for a terminal, and as plain text in a pipe or a log.

The max token of each example is highlighted on a colour terminal and drawn `[[like this]]`
everywhere else, so the mark survives `| less`, a log file and a colour-blind reader. Tokens go
through `npclient.tokens.visible_token` (the feature pages use it too): a token that is only
whitespace shows as `␣`, a newline as `↵`. Each example is one line, windowed around its max
token to fit the width.
"""

from __future__ import annotations

from typing import Any, Optional

from npclient.tokens import visible_token

from .output import cells, shorten, table_lines, width

MARK_OPEN, MARK_CLOSE = "[[", "]]"
ELLIPSIS = "\u2026"


def _g(value: Any) -> str:
    return "?" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _ranked(feature: Any) -> list[Any]:
    return sorted(feature.activations, key=lambda a: -(a.max_value if a.max_value is not None else float("-inf")))


def _peak(act: Any) -> Optional[int]:
    """Index of the example's max token: as stored, else the largest value."""
    if act.max_value_token_index is not None and 0 <= act.max_value_token_index < len(act.tokens):
        return act.max_value_token_index
    values = [v if v is not None else float("-inf") for v in (act.values or [])]
    return max(range(len(values)), key=values.__getitem__) if values else None


def window(tokens: list[str], peak: Optional[int], room: int) -> tuple[int, int]:
    """[lo, hi) of the tokens shown: the max token, then its neighbours alternately, as many
    as fit `room` columns (an ellipsis on each cut side included)."""
    if not tokens:
        return 0, 0
    centre = peak if peak is not None else 0
    lo, hi = centre, centre + 1
    used = cells(tokens[centre]) + len(MARK_OPEN) + len(MARK_CLOSE)
    budget = room - 2  # an ellipsis may go on each side
    grew = True
    while grew:
        grew = False
        for i in (lo - 1, hi):
            if 0 <= i < len(tokens) and used + cells(tokens[i]) <= budget:
                used += cells(tokens[i])
                lo, hi = (i, hi) if i < lo else (lo, i + 1)
                grew = True
    return lo, hi


def activation_line(act: Any, total: int, colour: bool) -> Any:
    """One example as a rich Text: its max value, then the window of tokens around the peak."""
    from rich.text import Text

    value = act.max_value if act.max_value is not None else float("nan")
    line = Text(f"  {value:8.3f}  ")
    tokens = [visible_token(t) for t in act.tokens]
    peak = _peak(act)
    lo, hi = window(tokens, peak, max(10, total - cells(line.plain)))
    if lo > 0:
        line.append(ELLIPSIS)
    for i in range(lo, hi):
        if i == peak and colour:
            line.append(tokens[i], style="bold black on yellow")
        elif i == peak:
            line.append(MARK_OPEN + tokens[i] + MARK_CLOSE)
        else:
            line.append(tokens[i])
    if hi < len(tokens):
        line.append(ELLIPSIS)
    return line


def logit_rows(feature: Any, n: int = 8) -> list[dict[str, Any]]:
    """Top and bottom logits side by side, tokens made visible."""
    pos = [(s, v) for s, v in zip(feature.pos_str or [], feature.pos_values or []) if v is not None][:n]
    neg = [(s, v) for s, v in zip(feature.neg_str or [], feature.neg_values or []) if v is not None][:n]
    rows = []
    for i in range(max(len(pos), len(neg))):
        top = pos[i] if i < len(pos) else (None, None)
        bottom = neg[i] if i < len(neg) else (None, None)
        rows.append({"top_logit": None if top[0] is None else visible_token(top[0]), "top_value": top[1],
                     "bottom_logit": None if bottom[0] is None else visible_token(bottom[0]), "bottom_value": bottom[1]})
    return rows


def activation_rows(feature: Any, n_acts: int) -> list[dict[str, Any]]:
    """The top examples as rows (`show --format csv`): every token, the max one named."""
    rows = []
    for rank, act in enumerate(_ranked(feature)[:n_acts]):
        peak = _peak(act)
        rows.append({
            "feature": str(feature.id), "rank": rank, "max_value": act.max_value, "max_token_index": peak,
            "max_token": act.tokens[peak] if peak is not None else None, "text": "".join(act.tokens),
        })
    return rows


def render_feature(feature: Any, n_acts: int) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    colour = console.is_terminal and not console.no_color and console.color_system is not None
    total = width()
    head = Text(str(feature.id), style="bold")
    head.append(f"  maxAct≈{_g(feature.max_act_approx)}  frac_nonzero={_g(feature.frac_nonzero)}")
    console.print(head)
    if feature.explanations:
        for e in feature.explanations:
            scores = ", ".join(f"{s.explanation_score_type_name}={s.value}" for s in e.scores if s.value is not None)
            text = f"  • {visible_token(e.description)}  [{e.explanation_model_name or '?'}]" + (f"  ({scores})" if scores else "")
            console.print(Text(shorten(text, total)))
    else:
        console.print(Text("  (no explanations)"))
    console.print(Text("Top activations" + ("" if colour else " (max token in [[ ]])"), style="bold"))
    for act in _ranked(feature)[:n_acts]:
        console.print(activation_line(act, total, colour))
    logits = logit_rows(feature)
    if logits:
        console.print(Text("Logits", style="bold"))
        for line in table_lines(logits, ["top_logit", "top_value", "bottom_logit", "bottom_value"], total - 2):
            console.print(Text("  " + line))
    if feature.topk_cos_sim_indices:
        near = ", ".join(f"{i} ({v:.2f})" for i, v in zip(feature.topk_cos_sim_indices[1:6], feature.topk_cos_sim_values[1:6]) if v is not None)
        console.print(Text("Decoder neighbours: ", style="bold") + Text(near))
