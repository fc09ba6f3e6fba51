"""Vietnamese text: normalization and the small helpers built on it.

This module owns the one normalizer that every vnmini entry point applies before
any tokenizer (corpus reading, tokenizer training, data prep, chat input, eval).
llama.cpp applies no normalizer of its own, so text has to reach the tokenizer
already in the form the tokenizer was trained on; an NFD "tiếng" is 3 code
points longer than the NFC one and splits into 2-3x the tokens.

    from vnmini.text.normalization import normalize, count_syllables
    normalize("Tie\u0302\u0301ng Vie\u0323\u0302t hoà thuỷ")   # 'Tiếng Việt hòa thủy'
    normalize("hòa", tone_style="old")                          # 'hoà'
    count_syllables("Xin chào các bạn")                         # 4

``normalize`` does, in order:

1. removes zero-width, bidi-control, soft-hyphen and C0/C1 control characters
   (tab and newline stay; a zero-width joiner inside an emoji sequence stays);
2. unifies whitespace: CR/LF and Unicode line separators become ``\\n``, exotic
   spaces (NBSP, em space, ideographic space...) become ``" "``, trailing spaces
   at line ends go, 3+ newlines become one blank line;
3. Unicode NFC (composes "base letter + combining tone" input; a tone typed
   before the hat/breve/horn is moved after it first, or NFC would not compose);
4. one tone-mark placement for open ``oa``/``oe``/``uy`` syllables: ``"new"``
   (default, the majority on today's web) writes ``hòa khỏe thủy``, ``"old"``
   writes ``hoà khoẻ thuỷ``. ``quý``/``qua`` (``qu`` is the onset) and closed
   syllables such as ``hoàn``/``khuyên`` are never touched.

It is idempotent: ``normalize(normalize(s)) == normalize(s)`` (property-tested).

The syllable helpers (``ONSETS``, ``RHYMES``, ``place_tone``,
``generate_syllables``) spell Vietnamese syllables by rule; tests generate
inputs from them and the tokenizer trainer can seed its vocabulary with them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

TONE_STYLES = ("new", "old")

# Combining tone marks: huyền, sắc, ngã, hỏi, nặng. (Circumflex, breve and horn
# are letter-forming marks, not tones.)
TONE_MARKS = {"grave": "\u0300", "acute": "\u0301", "tilde": "\u0303", "hook": "\u0309", "dot": "\u0323"}
_TONE_CHARS = set(TONE_MARKS.values())
TONES = ("", *TONE_MARKS.values())  # "" is thanh ngang (no mark)

# -------------------------------------------------------------- step 1 and 2
_ZERO_WIDTH = "\u200b\u200c\u2060\ufeff\u00ad\u200e\u200f\u061c" + "".join(map(chr, range(0x202A, 0x202F))) + "".join(
    map(chr, range(0x2066, 0x206A))
)
_ZWJ = "\u200d"
# Every C0/C1 control except \t and \n (\r is handled by the line-ending rule first).
_CONTROLS = "".join(chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0x85),
                                     *range(0x86, 0xA0)])
_DROP_TABLE = {ord(c): None for c in _ZERO_WIDTH + _CONTROLS}
_LINE_BREAKS = re.compile("\r\n|[\r\u0085\u2028\u2029\x0b\x0c]")
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile("[ \t]+(?=\n)")
# Some keyboards emit the tone before the hat/breve/horn ("a" + acute + circumflex). Both marks
# have combining class 230, so NFC keeps that order and never composes "ấ": swap them first.
_LETTER_MARKS = "\u0302\u0306\u031b"
_TONE_BEFORE_MARK = re.compile("([\u0300\u0301\u0303\u0309\u0323]+)([\u0302\u0306\u031b]+)")
_BLANK_RUNS = re.compile("\n{3,}")


def _clean_zwj(text: str) -> str:
    """Drop ZWJ except between two symbols (emoji sequences such as family or flag glyphs need it)."""
    if _ZWJ not in text:
        return text
    out = []
    for i, ch in enumerate(text):
        if ch == _ZWJ:
            prev = text[i - 1] if i > 0 else ""
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if prev and nxt and unicodedata.category(nxt) == "So" and (
                unicodedata.category(prev) in ("So", "Sk") or prev == "\ufe0f"
            ):
                out.append(ch)
            continue
        out.append(ch)
    return "".join(out)


# -------------------------------------------------------------------- step 4
_VOWELS_PLAIN = "aăâeêioôơuưy"
_LETTERS = "a-zA-Z\u00c0-\u024f\u1e00-\u1eff"  # Latin incl. all precomposed Vietnamese letters


def _variants(base: str) -> str:
    """``base`` in both cases with each of the six tones, as precomposed NFC characters."""
    out = []
    for b in (base, base.upper()):
        for t in TONES:
            out.append(unicodedata.normalize("NFC", b + t))
    return "".join(out)


_O, _A, _E, _U, _Y = (_variants(c) for c in "oaeuy")
# Onset consonant letters (q is allowed by the pattern and then rejected: "qu" is an onset).
_ONSET_CHARS = "bcdđghklmnpqrstvxBCDĐGHKLMNPQRSTVX"
_OPEN_PAIR = re.compile(
    rf"(?<![{_LETTERS}])([{_ONSET_CHARS}]*)(?:([{_O}])([{_A}{_E}])|([{_U}])([{_Y}]))(?![{_LETTERS}\u0300-\u036f])"
)


def _split_tone(ch: str) -> tuple[str, str]:
    """'ò' -> ('o', '\\u0300'); 'o' -> ('o', '')."""
    d = unicodedata.normalize("NFD", ch)
    tone = "".join(c for c in d if c in _TONE_CHARS)
    base = "".join(c for c in d if c not in _TONE_CHARS)
    return unicodedata.normalize("NFC", base), tone


def _with_tone(base: str, tone: str) -> str:
    return unicodedata.normalize("NFC", base + tone)


def _fix_open_pair(m: re.Match, first: bool) -> str:
    onset = m.group(1)
    v1, v2 = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
    if onset[-1:].lower() == "q":  # quý, quà: the u belongs to the onset
        return m.group(0)
    b1, t1 = _split_tone(v1)
    b2, t2 = _split_tone(v2)
    if bool(t1) == bool(t2):  # no tone, or a malformed double tone: leave it alone
        return m.group(0)
    tone = t1 or t2
    if first:
        return onset + _with_tone(b1, tone) + b2
    return onset + b1 + _with_tone(b2, tone)


def normalize(text: str, tone_style: str = "new") -> str:
    """Normalize Vietnamese text (see module docstring). Idempotent; ``tone_style`` is "new" or "old"."""
    if tone_style not in TONE_STYLES:
        from vnmini.errors import VnminiError

        raise VnminiError(f"tone style {tone_style!r}: use 'new' (hòa, thủy) or 'old' (hoà, thuỷ).")
    text = _LINE_BREAKS.sub("\n", text)
    text = _clean_zwj(text.translate(_DROP_TABLE))
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    if any(c in text for c in _LETTER_MARKS):
        text = _TONE_BEFORE_MARK.sub(r"\2\1", unicodedata.normalize("NFD", text))
    text = unicodedata.normalize("NFC", text)
    first = tone_style == "new"
    return _OPEN_PAIR.sub(lambda m: _fix_open_pair(m, first), text)


# --------------------------------------------------------------- measurement
# A "syllable" is a maximal run of letters (Vietnamese writes one syllable per
# space-separated word); digits and punctuation are not syllables.
_SYLLABLE = re.compile(r"[^\W\d_]+")
_VI_MARKED = frozenset(
    c for v in _VOWELS_PLAIN for c in _variants(v) if c not in _VOWELS_PLAIN + _VOWELS_PLAIN.upper()
) | set("đĐ")


def syllables(text: str) -> list[str]:
    """The syllables (letter runs) of ``text``."""
    return _SYLLABLE.findall(text)


def count_syllables(text: str) -> int:
    """Number of syllables (letter runs) in ``text``; the denominator of tokens per syllable."""
    return sum(1 for _ in _SYLLABLE.finditer(text))


def has_vietnamese_diacritics(word: str) -> bool:
    """True if ``word`` has a letter only Vietnamese uses (đ, ă, â, ê, ô, ơ, ư or a toned vowel)."""
    return any(c in _VI_MARKED for c in unicodedata.normalize("NFC", word))


def vietnamese_share(text: str) -> float:
    """Fraction of syllables carrying Vietnamese diacritics (about 0.6-0.8 for Vietnamese prose, ~0 for English)."""
    words = syllables(unicodedata.normalize("NFC", text))
    if not words:
        return 0.0
    return sum(1 for w in words if has_vietnamese_diacritics(w)) / len(words)


def tone_style_counts(text: str) -> dict[str, int]:
    """Count open oa/oe/uy syllables written in each tone placement: {"new": hòa-style, "old": hoà-style}."""
    counts = {"new": 0, "old": 0}
    for m in _OPEN_PAIR.finditer(unicodedata.normalize("NFC", text)):
        if m.group(1)[-1:].lower() == "q":
            continue
        v1, v2 = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
        t1, t2 = _split_tone(v1)[1], _split_tone(v2)[1]
        if t1 and not t2:
            counts["new"] += 1
        elif t2 and not t1:
            counts["old"] += 1
    return counts


def is_nfc(text: str) -> bool:
    return unicodedata.is_normalized("NFC", text)


# ------------------------------------------------------ syllables by rule
ONSETS = (
    "", "b", "c", "ch", "d", "đ", "g", "gh", "gi", "h", "k", "kh", "l", "m", "n", "ng", "ngh",
    "nh", "ph", "qu", "r", "s", "t", "th", "tr", "v", "x",
)  # fmt: skip
_OPEN_RHYMES = (
    "a e ê i o ô ơ u ư y ai ao au ay âu ây eo êu ia iu oa oe oi ôi ơi ua ui uê uy ưa ưi ưu uơ "
    "iêu yêu oai oay oeo uây uôi ươi ươu uya uyu"
).split()
_CLOSED_NUCLEI = {
    "a": "m n ng nh p t c ch", "ă": "m n ng p t c", "â": "m n ng p t c", "e": "m n ng p t c",
    "ê": "m n nh p t ch", "i": "m n nh p t ch", "o": "m n ng p t c", "ô": "m n ng p t c",
    "ơ": "m n p t", "u": "m n ng p t c", "ư": "m n ng t c", "iê": "m n ng p t c", "yê": "m n t",
    "oa": "m n ng nh p t c ch", "oă": "m n ng t c", "oe": "m n t", "uâ": "n ng t", "uô": "m n ng t c",
    "ươ": "m n ng p t c", "uyê": "n t", "uy": "nh ch t", "oo": "ng c",
}  # fmt: skip
RHYMES = tuple(_OPEN_RHYMES) + tuple(n + c for n, codas in _CLOSED_NUCLEI.items() for c in codas.split())
_STOPS = ("p", "t", "c", "ch")
_MARKED_NUCLEUS = "êơôâăư"


def place_tone(plain: str, tone: str, style: str = "new") -> str:
    """Put ``tone`` (a combining mark from TONES, or "") on the right vowel of a lowercase plain syllable.

    Rules (standard orthography): a vowel with a hat or horn takes the tone (the
    last such, so ``ươ`` -> ``ơ``); else with a final consonant the last vowel;
    else one vowel -> it, two -> the first (``oa/oe/uy`` follow ``style``),
    three -> the middle. ``qu`` and ``gi`` before a vowel are onsets.
    """
    if not tone:
        return plain
    start = 0
    if plain.startswith("qu") or (plain.startswith("gi") and len(plain) > 2 and plain[2] in _VOWELS_PLAIN):
        start = 2
    while start < len(plain) and plain[start] not in _VOWELS_PLAIN:
        start += 1
    end = start
    while end < len(plain) and plain[end] in _VOWELS_PLAIN:
        end += 1
    if start == end:  # "gi" + tone -> gì: the i of gi carries it
        start, end = (1, 2) if plain.startswith("gi") else (start, end)
        if start == end:
            return plain
    nucleus, coda = plain[start:end], plain[end:]
    marked = [i for i, c in enumerate(nucleus) if c in _MARKED_NUCLEUS]
    if marked:
        pos = marked[-1]
    elif coda:
        pos = len(nucleus) - 1
    elif len(nucleus) == 1:
        pos = 0
    elif len(nucleus) == 2:
        pos = 1 if (style == "old" and nucleus in ("oa", "oe", "uy")) else 0
    else:
        pos = 1
    i = start + pos
    return plain[:i] + unicodedata.normalize("NFC", plain[i] + tone) + plain[i + 1 :]


def _spell(onset: str, rhyme: str) -> str | None:
    """Onset + rhyme with Vietnamese spelling rules, or None if the combination is not written."""
    front = rhyme[0] in "eêi" or rhyme.startswith("yê")
    if onset in ("c", "g", "ng") and front:
        return None  # written k, gh, ngh
    if onset in ("k", "gh", "ngh") and not front:
        return None
    if onset == "qu" and rhyme[0] in "ouư":
        return None
    if rhyme.startswith("yê") and onset:
        return None  # iê after an onset
    if rhyme.startswith("iê") and not onset:
        return None
    if onset == "gi" and rhyme[0] == "i":
        return "g" + rhyme  # gi + iêng -> giêng
    return onset + rhyme


def generate_syllables(style: str = "new") -> Iterator[str]:
    """Every onset × rhyme × tone the spelling rules allow (lowercase, NFC): about 18,000 forms.

    Stop-final rhymes (-p -t -c -ch) only take the sắc and nặng tones. Many forms
    are rare or unused; the set is a superset of the syllables in use.
    """
    seen: set[str] = set()
    for onset in ONSETS:
        for rhyme in RHYMES:
            plain = _spell(onset, rhyme)
            if plain is None:
                continue
            tones = ("\u0301", "\u0323") if rhyme.endswith(_STOPS) else TONES
            for tone in tones:
                syl = place_tone(plain, tone, style)
                if syl not in seen:  # gi + i and gi + ì spell the same as gi + "" and gì
                    seen.add(syl)
                    yield syl


_RHYME_SET = frozenset(RHYMES)
_ONSETS_LONGEST_FIRST = sorted(ONSETS, key=len, reverse=True)


def parse_syllable(word: str) -> tuple[str, str, str] | None:
    """Split a syllable into (onset, plain rhyme, tone mark), lowercase; None if it is not Vietnamese by rule.

    ``parse_syllable("Người") == ("ng", "ươi", "\\u0300")``; ``parse_syllable("fax") is None``.
    """
    d = unicodedata.normalize("NFD", word.lower())
    tone = "".join(c for c in d if c in _TONE_CHARS)
    if len(tone) > 1:
        return None
    plain = unicodedata.normalize("NFC", "".join(c for c in d if c not in _TONE_CHARS))
    for onset in _ONSETS_LONGEST_FIRST:
        if not plain.startswith(onset):
            continue
        rhyme = plain[len(onset) :]
        if onset == "gi" and (not rhyme or rhyme[0] not in _VOWELS_PLAIN):
            continue  # "gì", "gin": g + i...
        if rhyme in _RHYME_SET:
            return onset, rhyme, tone
    return None
