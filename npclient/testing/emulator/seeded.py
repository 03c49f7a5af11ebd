"""Seeded building blocks of the emulator's payloads: stable ids, timestamps and random
generators derived from blake2b (never Python's `hash`), and the vocabularies (topics,
explainers, tokens) explanations and activations are drawn from.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from ... import wire
from .faults import stable_unit

SEARCH_PAGE = wire.SEARCH_PAGE
OFFSET_PAGE = 25
CREATOR_ID = "clsxqq2xd0000vvp2k5itlhqj"  # the account public activations are filed under
CREATOR_NAME = "bot"
VECTOR_USER = {"id": "clv7x2hdl0001gq8u3m0rlk2b", "name": "synthetic-user"}

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Explanations of the fallback decoder (`make_synthetic`, sources too small for `saes.plant`).
FAMILY_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sports", ("football", "basketball", "tennis", "golf")),
    ("colors", ("red", "green", "blue", "yellow")),
    ("animals", ("dogs", "cats", "birds", "horses")),
)
TOPICS = (
    "legal terminology", "dates and years", "French words", "closing parentheses",
    "city names", "sadness and grief", "medical terms", "python code", "chemical elements",
    "numbers in lists", "the word 'the'", "questions", "music genres", "programming errors",
    "financial markets", "weather conditions", "family members", "body parts", "cooking recipes",
    "religious texts", "military ranks", "space exploration", "video games", "social media",
    "academic citations", "HTML tags", "mathematical operators", "quotation marks",
    "first names", "last names", "countries in Europe", "American politics", "emotions of anger",
    "computer hardware", "plural nouns", "past tense verbs", "comparative adjectives",
    "negation", "uncertainty", "time durations", "measurement units", "currency symbols",
    "web URLs", "email addresses", "Japanese text", "emoji", "line breaks", "indentation",
    "sentence endings", "the start of a document", "names of rivers", "car brands",
    "chess moves", "poetry", "movie titles", "scientific units", "genetics", "ancient history",
    "superheroes", "coffee and tea", "travel destinations", "legal contracts", "sports scores",
)
TEMPLATES = (
    "{t}", "references to {t}", "mentions of {t}", "{t} in text", "words related to {t}",
    "tokens about {t}", "{t} and related concepts",
)
EXPLAINERS = ("gpt-4o-mini", "claude-3-5-haiku-20241022", "gpt-3.5-turbo", "gemini-2.0-flash")
EXPLANATION_TYPES = ("oai_token-act-pair", "np_max-act-logits", "eleuther_acts_top20")
SCORE_TYPES = ("recall_alt", "eleuther_fuzz", "eleuther_detection")

_WORDS = (
    "the of and to in is was for that on with as by at from his her it an be are this which "
    "or had not but have were one all their they been has who more new would when there she "
    "time will can about year into only other people after some them than first also two over "
    "could such these its most made between state world under city known during while where "
    "school house water government market music family system power night street money story "
    "war game team book church court report police party field history office market river "
    "north south east west black white small large early later public local second third "
    "because before through without against however although therefore perhaps never always"
).split()
_PIECES = (
    "ing", "ed", "ly", "er", "s", "tion", "ment", "'s", "n't", "ness", "able", "ist", "un", "re",
    ".", ",", "!", "?", ":", ";", " (", ")", "\n", "\n\n", " \"", "\"", " -", " 2", "0", "1", "19",
    " 2024", "%", " $", " 100", "://", "www", ".com", " {", "}", " =", "()", "_", "  ", "    ",
)
_SPECIAL = (
    "東京", "的", "日本語", "한국어", "中", "🙂", "🚀", "👍🏽", "👨‍👩‍👧", "e\u0301", "n\u0303o",
    "\u200b", "\x00", "\t", "\x1b[0m", "\x1b", "\u2028", "\u2029", "\ufeff", "\ufffd",
    "<|endoftext|>", "\\", "\\n", "\"q\"", "\r\n", "\x7f", "Ω", "ÿ", "\u00a0", "\U0001d400",
    "\x01\x02", "</s>", "\u202e", "Ё", "ß", "ﬁ",
)
_COMMON = np.array(
    [" " + w for w in _WORDS] + [w.capitalize() for w in _WORDS[:60]] + [" " + w.capitalize() for w in _WORDS[:60]]
    + list(_PIECES),
    dtype=object,
)
_SPECIAL_ARR = np.array(_SPECIAL, dtype=object)
_SPECIAL_RATE = 0.012
_EPOCH = datetime(2024, 3, 1, tzinfo=timezone.utc)
_N_HIST = 50
_TOPK_BLOCK = 512
_FREQ_X = np.linspace(-6.0, -1.0, _N_HIST)
_LOGIT_X = np.linspace(-0.8, 0.8, _N_HIST)


# --------------------------------------------------------------------------- helpers


def _digest(*parts: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return h.digest()


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(_digest(*parts), "little")))


def _cuid(*parts: Any) -> str:
    """A cuid-looking id ('cl' + 23 lower-case hex chars), stable for its inputs."""
    return "cl" + _digest("id", *parts).hex()[:23]


def _iso(*parts: Any) -> str:
    """A stable ISO-8601 timestamp with milliseconds and 'Z', as Prisma renders it."""
    ms = int(stable_unit(b"ts", *parts) * 400 * 86400 * 1000)
    t = _EPOCH + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _floats(a: np.ndarray, decimals: int = 4) -> list[float]:
    """Round and convert. NaN/Inf stay as they are in the database row: the API renders them
    `null` (JSON.stringify; orjson does the same) and the bulk exports bare `NaN`/`Infinity`
    (Python's json.dumps defaults, utils/neuronpedia-utils/neuronpedia_utils/export-data.py)."""
    out: list[float] = np.round(np.asarray(a, dtype=np.float64), decimals).tolist()
    return out


words = wire.words
