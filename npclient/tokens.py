"""Tokens made visible: the one rule the feature pages and the terminal share.

A model's tokens are often whitespace or control characters ("\\n", " ", "\\t"); printed as they
are they vanish, or garble a terminal. Pages and `np-mirror show` draw them through
`visible_token`, so a token looks the same everywhere. Kept free of heavy imports: the CLI
uses it too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["visible_token"]

# Control characters: newline, tab and return by the usual arrows, the rest as Unicode control
# pictures (U+2400 block). A token made only of spaces shows each space as "␣".
_VISIBLE = {0x0A: "\u21b5", 0x09: "\u2192", 0x0D: "\u240d", 0x7F: "\u2421"}
# Zero-width characters, line separators and the bidirectional controls that would reorder
# what follows them on a terminal or a page.
_INVISIBLE = "\u200b\u200c\u200d\u2028\u2029\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
OPEN_BOX = "\u2423"


def visible_token(token: Any) -> str:
    """`token` with every character a reader could miss drawn as a symbol: control characters
    as arrows or control pictures, zero-width ones as `\\uXXXX`, and the spaces of a token that
    is only whitespace as `␣` (a space inside a word-piece such as " the" stays a space)."""
    text = "" if token is None else str(token)
    if text.isascii() and text.isprintable():  # the common case, in one C call each
        return text.replace(" ", OPEN_BOX) if text and not text.strip() else text
    out = []
    for ch in text:
        code = ord(ch)
        if code in _VISIBLE:
            out.append(_VISIBLE[code])
        elif code < 0x20:
            out.append(chr(0x2400 + code))
        elif 0x80 <= code < 0xA0 or ch in _INVISIBLE:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    if text and not text.strip():
        return "".join(OPEN_BOX if c == " " or c == "\u00a0" else c for c in out)
    return "".join(out)
