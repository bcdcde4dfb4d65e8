"""Text as the safety rules read it: the tricks that hide a word from a regex undone.

`clean` removes what changes how text looks to a regex but not to a reader: invisible and format
characters (zero-width space and joiners, soft hyphen, BOM, bidi controls, tag characters,
fillers), compatibility forms (fullwidth "ｄｏｓｅ", mathematical "𝐝𝐨𝐬𝐞", via NFKC) and letters
of other scripts that look Latin (Cyrillic "о", Greek "ο"). medtune answers in en/es/pt only,
so mapping Cyrillic and Greek letters costs no text it serves.
`normalize` also strips accents and unifies apostrophes and spaces: the rules are written
without accents. `variants` adds the spellings an attacker uses to dodge a word filter: letters
spaced or dotted apart ("d o u b l e", "d.o.s.e", "in-su-lin") and digits for letters ("d0se",
"1nsulin"). They are extra readings, matched besides the normalized text, never instead of it:
"5 mg" and "B12" stay as they are in the text the rules read first.
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u00b4": "'", "`": "'", "\u02bc": "'"}
# Look-alikes of Latin letters (Unicode's confusables for the letters our languages use).
_CYRILLIC = dict(zip("аеорсухіјѕԁԛԝһӏүкмтАВЕКМНОРСТХІЈЅҮ", "aeopcyxijsdqwhlykmtABEKMHOPCTXIJSY"))
_GREEK = dict(zip("αεικνορτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "aeikvoptuxABEZHIKMNOPTYX"))
_LATIN = {"ı": "i", "ɑ": "a", "ɡ": "g", "ǀ": "l"}
_LOOKALIKES = str.maketrans(_APOSTROPHES | _CYRILLIC | _GREEK | _LATIN)
# Invisible characters that Unicode files under letters or symbols, not under format (Cf).
_FILLERS = set("\u115f\u1160\u3164\uffa0\u2800")


def _visible(c: str) -> bool:
    cat = unicodedata.category(c)
    if cat == "Cf" or c in _FILLERS:
        return False
    return cat != "Cc" or c.isspace()  # control characters go; tabs and newlines are spaces


def clean(text: str) -> str:
    """Invisible characters removed, compatibility forms and look-alike letters mapped; accents kept
    (language detection needs them)."""
    text = "".join(filter(_visible, text))
    return unicodedata.normalize("NFKC", text).translate(_LOOKALIKES)


def normalize(text: str) -> str:
    """`clean`, then accents stripped ("torácico" -> "toracico", "não" -> "nao") and spaces unified.

    Case is kept so that a pattern can look for a capitalised name; matching ignores case otherwise.
    """
    decomposed = unicodedata.normalize("NFKD", clean(text))
    # Every nonspacing mark goes: accents, marks stacked on a letter, variation selectors.
    return " ".join("".join(c for c in decomposed if unicodedata.category(c) != "Mn").split())


# Three or more single letters or digits separated by spaces, dots, hyphens, underscores or
# stars: "d o u b l e", "d.o.s.e". Each must stand alone, so words are never glued together.
# Written so that every character is tried a bounded number of times: linear in the text.
_SPELLED = re.compile(r"(?<![^\W_])[^\W_](?![^\W_])(?:[ .\-_*·•]+[^\W_](?![^\W_])){2,}")
_SPELLED_GAPS = re.compile(r"[ .\-_*·•]+")
_ONE_LETTER_WORDS = set("iayoe")  # English "I", "a"; Spanish "y", "a", "o", "e"; Portuguese "e", "a", "o"
_INNER_GAPS = re.compile(r"(?<=[^\W\d_])[.\-_*·•]+(?=[^\W\d_])")  # "in-su-lin", "dou.ble"
_TOKEN = re.compile(r"[\w@$]+")
_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
# "1" is an "i" in "1nsulin" and an "l" in "doub1e": both readings are tried.
_LEET_I, _LEET_L = str.maketrans(_LEET | {"1": "i"}), str.maketrans(_LEET | {"1": "l"})
_HAS_LEET = re.compile(r"[0134578@$]")


def variants(norm: str) -> list[str]:
    """`norm` (a `normalize`d text), then its de-obfuscated readings when there are any."""
    unspaced = _INNER_GAPS.sub("", norm)
    readings = [norm]
    for keep_first in (False, True):
        joined = _SPELLED.sub(lambda m: _join(m.group(), keep_first), unspaced)
        readings.append(joined)
        for table in (_LEET_I, _LEET_L):
            # Only words that mix letters with look-alike digits: numbers alone ("20 units") are left alone.
            readings.append(_TOKEN.sub(lambda m: _leet(m.group(), table), joined))
    return list(dict.fromkeys(readings))


def _join(run: str, keep_first: bool) -> str:
    """A spelled-out run as one word; `keep_first` reads its first letter as a word of its own, for
    "I d o u b l e" ("I double") as against "i n s u l i n"."""
    if keep_first and run[0].lower() in _ONE_LETTER_WORDS:
        return run[0] + " " + _SPELLED_GAPS.sub("", run[1:].lstrip(" .-_*·•"))
    return _SPELLED_GAPS.sub("", run)


def _leet(word: str, table: dict) -> str:
    if _HAS_LEET.search(word) and any(c.isalpha() for c in word):
        return word.translate(table)
    return word
