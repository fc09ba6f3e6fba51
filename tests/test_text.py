"""Normalization: NFC, one tone placement for open oa/oe/uy, controls/whitespace, idempotence."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnmini.errors import VnminiError
from vnmini.text.normalization import (
    ONSETS,
    RHYMES,
    TONES,
    count_syllables,
    generate_syllables,
    has_vietnamese_diacritics,
    normalize,
    parse_syllable,
    place_tone,
    tone_style_counts,
    vietnamese_share,
)

# A syllable by rule: onset × rhyme × tone, in either tone style, any case.
syllable = st.builds(
    lambda o, r, t, style, upper: (lambda s: s.upper() if upper else s)(place_tone(o + r, t, style)),
    st.sampled_from(ONSETS), st.sampled_from(RHYMES), st.sampled_from(TONES), st.sampled_from(["new", "old"]),
    st.booleans(),
)
separator = st.sampled_from([" ", "  ", ", ", ".\n", "\n\n\n", "\u00a0", "\t", "\r\n", "\u200b", " 12 ", "!? "])
sentence = st.lists(st.tuples(syllable, separator), min_size=1, max_size=12).map(
    lambda xs: "".join(a + b for a, b in xs))


def scramble(text: str, form: str) -> str:
    """NFD, or NFD with the tone mark placed before other combining marks (a form seen in real files)."""
    d = unicodedata.normalize("NFD", text)
    if form == "nfd":
        return d
    return d.replace("\u0302\u0301", "\u0301\u0302").replace("\u031b\u0300", "\u0300\u031b")


@pytest.mark.parametrize(
    "raw, new, old",
    [
        ("hoà bình", "hòa bình", "hoà bình"),
        ("khoẻ mạnh", "khỏe mạnh", "khoẻ mạnh"),
        ("thuỷ lợi", "thủy lợi", "thuỷ lợi"),
        ("Uỷ ban", "Ủy ban", "Uỷ ban"),
        ("HOÀ", "HÒA", "HOÀ"),
        ("quý quà qua", "quý quà qua", "quý quà qua"),
        ("hoàn thành khuyến hoài xoáy", "hoàn thành khuyến hoài xoáy", "hoàn thành khuyến hoài xoáy"),
        ("buy a guy", "buy a guy", "buy a guy"),
    ],
)
def test_tone_styles(raw, new, old):
    assert normalize(raw) == new
    assert normalize(raw, "old") == old
    assert normalize(new, "old") == old


def test_nfd_and_controls_and_whitespace():
    raw = "Tie\u0302\u0301ng Vie\u0323\u0302t\u200b\u00a0\ufeffhoa\u0300\r\nx \t\n\n\n\ny\x07"
    assert normalize(raw) == "Tiếng Việt hòa\nx\n\ny"
    family = "👨\u200d👩\u200d👧"
    assert normalize(family) == family  # ZWJ inside emoji sequences is kept


def test_bad_tone_style():
    with pytest.raises(VnminiError):
        normalize("hòa", tone_style="middle")


@settings(max_examples=300, deadline=None)
@given(sentence, st.sampled_from(["nfd", "reordered", "nfc"]))
def test_normalize_idempotent_and_form_independent(text, form):
    once = normalize(text)
    assert normalize(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert normalize(scramble(text, form) if form != "nfc" else text) == once
    # Old and new style inputs meet in one form, whichever style is asked for.
    assert normalize(normalize(text, "old")) == once
    old = normalize(text, "old")
    assert normalize(old, "old") == old and normalize(once, "old") == old


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_normalize_idempotent_any_text(text):
    once = normalize(text)
    assert normalize(once) == once


def test_generated_syllables_parse():
    sylls = list(generate_syllables())
    assert len(sylls) > 10_000 and len(set(sylls)) == len(sylls)
    assert {"người", "hòa", "thủy", "quý", "giữa", "nghiêng", "khuya"} <= set(sylls)
    assert all(normalize(s) == s for s in sylls)
    assert sum(parse_syllable(s) is not None for s in sylls) / len(sylls) > 0.99
    assert parse_syllable("fax") is None and parse_syllable("Người") == ("ng", "ươi", "\u0300")


def test_measurement_helpers():
    assert count_syllables("Điều 12. Xin chào 3 bạn") == 4
    assert has_vietnamese_diacritics("được") and not has_vietnamese_diacritics("con")
    assert vietnamese_share("hello world") == 0.0
    assert vietnamese_share("Xin chào các bạn, hôm nay trời đẹp quá") > 0.5
    assert tone_style_counts("hoà hòa thủy thuỷ quý") == {"new": 2, "old": 2}
