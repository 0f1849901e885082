"""Is an evidence snippet really in the dialogue? Quote matching for the ``evidence_grounded`` rule.

The judge shows a checklist item's evidence snippets as the *reference snippet* (method §4), so a snippet the
labeller invented steers the reward. A snippet is grounded when it occurs in the text its pointer names (the
``from`` part of step ``step`` of turn ``turn``), compared after :func:`normalize`:

- Unicode NFKC and case folding;
- JSON string escapes decoded (``\\"``, ``\\n``, ``\\uXXXX``…), so a snippet quoting the *encoded* arguments string
  (the reference writes ``"arguments": "{\\"teamid\\": …}"``) matches the decoded call and vice versa;
- every quote character, backslash and whitespace removed, so ``"city": "Oslo"`` matches ``{"city":"Oslo"}`` and a
  quote re-wrapped over two lines matches the one-line original.

A **near-quote** (a typo, a dropped article) is accepted when the best-aligned window of the text has a
:class:`difflib.SequenceMatcher` ratio of at least :data:`SIMILARITY_FLOOR` (0.9) with the snippet, both normalised.
Only snippets of at least :data:`MIN_FUZZY_CHARS` normalised characters may be near-quotes (a short snippet must
match exactly: one changed character in "42" is another number), and only against texts of at most
:data:`MAX_FUZZY_TEXT` normalised characters (beyond, exact matches only: the alignment is quadratic).

Standard library only (the gate runs it on every checklist item).

>>> grounded('"City": "Oslo"', '{"city":"Oslo","days":3}')
True
>>> grounded("12°C and light rain", "Rain all day in Bergen")
False
>>> round(similarity("the forecast for Oslo is rainy", "The forecast for Olso is rainy."), 2)
0.96
"""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher

#: A near-quote must reach this similarity (``SequenceMatcher.ratio`` of the normalised snippet and the best window
#: of the normalised text of the same length).
SIMILARITY_FLOOR = 0.9
#: Normalised snippets shorter than this must occur exactly.
MIN_FUZZY_CHARS = 12
#: Normalised texts longer than this are matched exactly only.
MAX_FUZZY_TEXT = 20_000

_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|[\"\\/bfnrt])")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": " ", "f": " ", "n": " ", "r": " ", "t": " "}
_DROP = re.compile(r"[\s\"'`\\\u2018\u2019\u201c\u201d\u00ab\u00bb]+")


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] == "u":
        return chr(int(code[1:], 16))
    return _SIMPLE_ESCAPES[code]


def normalize(text: str) -> str:
    """The form in which snippets and texts are compared (see the module docstring)."""
    if "\\" in text:
        text = _ESCAPE.sub(_unescape, text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _DROP.sub("", text.casefold())


def similarity(snippet: str, text: str, *, normalized: bool = False) -> float:
    """How well ``snippet`` is quoted somewhere in ``text``, in [0, 1]: 1.0 when it occurs (normalised), else the
    best :class:`~difflib.SequenceMatcher` ratio between the snippet and a window of the text of its length, aligned
    on each block the two share. 0.0 for an empty snippet."""
    s, t = (snippet, text) if normalized else (normalize(snippet), normalize(text))
    if not s:
        return 0.0
    if s in t:
        return 1.0
    if not t:
        return 0.0
    m = len(s)
    if len(t) <= m:
        return SequenceMatcher(None, s, t, autojunk=False).ratio()
    best = 0.0
    seen: set[int] = set()
    scorer = SequenceMatcher(None, autojunk=False)
    scorer.set_seq2(s)  # seq2 is the one SequenceMatcher indexes: the snippet, reused for every window
    for a, b, size in SequenceMatcher(None, t, s, autojunk=False).get_matching_blocks():
        if not size:
            continue
        start = min(max(0, a - b), len(t) - m)
        if start in seen:
            continue
        seen.add(start)
        scorer.set_seq1(t[start : start + m])
        best = max(best, scorer.ratio())
        if best >= 1.0:
            break
    return best


def grounded(snippet: str, text: str, *, normalized: bool = False) -> bool:
    """True when ``snippet`` (non-empty once normalised) occurs in ``text``, or is a near-quote of it (see the
    module docstring for the floor and its limits)."""
    s, t = (snippet, text) if normalized else (normalize(snippet), normalize(text))
    if not s:
        return False
    if s in t:
        return True
    if len(s) < MIN_FUZZY_CHARS or len(t) > MAX_FUZZY_TEXT:
        return False
    return similarity(s, t, normalized=True) >= SIMILARITY_FLOOR
