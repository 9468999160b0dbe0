"""Did the server say the right words? Transcript against target text: word error rate (English) or character error
rate (Chinese), after a normalisation that forgives what a listener would not hear (case, punctuation, numbers
written as digits or words), with jiwer for the edit-distance arithmetic.

Scores are between 0 (every word right) and 1 (capped: a hallucinating recogniser can insert more words than the
text has, which jiwer scores above 1; a request is either heard right or not, and a cap keeps percentiles readable).
"""

from __future__ import annotations

import re
import unicodedata

LANGUAGES = ("en", "zh")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")

# The default --max-content-error: a correct server's requests, transcribed by Moonshine base, score 0 on most
# sentences and at most one word in ten on the rest (docs/speech.md: the measured spread); a response carrying
# another request's audio, or losing words, scores far above it.
DEFAULT_MAX_ERROR = 0.3


def language_of(text: str) -> str:
    """The language whose metric scores ``text``: ``zh`` when it is mostly Han characters, else ``en``."""
    han = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    return "zh" if han and han >= latin / 4 else "en"


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def number_words(n: int) -> str:
    """English words of a whole number: 42000 -> 'forty two thousand' (no 'and', no hyphens, as normalised)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return number_words(head) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    return str(n)


def _year_words(n: int) -> str:
    """1998 -> 'nineteen ninety eight', as years are said (1900-1999, 2010-2099 style)."""
    high, low = divmod(n, 100)
    if low == 0:
        return number_words(high) + " hundred"
    return number_words(high) + " " + (("oh " + _ONES[low]) if low < 10 else number_words(low))


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _spell_number(match: re.Match[str]) -> str:
    text = match.group(0).rstrip(",")
    whole, _, fraction = text.replace(",", "").partition(".")
    if len(whole) > 15:
        return " ".join(_ONES[int(d)] for d in whole)
    value = int(whole)
    words = _year_words(value) if len(whole) == 4 and "," not in text and 1100 <= value <= 2099 \
        and value % 1000 >= 100 else number_words(value)
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return " " + words + " "


_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at ", "$": " dollars "}


def normalize_en(text: str) -> list[str]:
    """Words to compare: lower case, numbers as words, symbols said as words, punctuation and hyphens dropped."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = _NUMBER.sub(_spell_number, text)
    for symbol, said in _SYMBOLS.items():
        text = text.replace(symbol, said)
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [w for w in words if w]


_ZH_DIGITS = "零一二三四五六七八九"


def _zh_number(n: int) -> str:
    if n < 10:
        return _ZH_DIGITS[n]
    units = ((10**8, "亿"), (10**4, "万"), (1000, "千"), (100, "百"), (10, "十"))
    for size, name in units:
        if n >= size:
            head, rest = divmod(n, size)
            tail = ""
            if rest:
                tail = ("零" if rest < size // 10 else "") + _zh_number(rest)
            lead = "" if (size == 10 and head == 1 and n < 20) else _zh_number(head)
            return lead + name + tail
    return str(n)


def normalize_zh(text: str) -> list[str]:
    """Characters to compare: numbers read out in Chinese, Latin words kept whole, punctuation and spaces dropped."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\d+", lambda m: _zh_number(int(m.group(0))) if len(m.group(0)) <= 12 else
                  "".join(_ZH_DIGITS[int(d)] for d in m.group(0)), text)
    units: list[str] = []
    for token in re.findall(r"[a-z']+|[^\W\d_a-z]", text):
        units.append(token)
    return units


def error_rate(expected: str, heard: str, language: str) -> float:
    """WER (``en``) or CER (``zh``) of ``heard`` against ``expected``, normalised, capped at 1."""
    import jiwer

    reference = normalize_zh(expected) if language == "zh" else normalize_en(expected)
    hypothesis = normalize_zh(heard) if language == "zh" else normalize_en(heard)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    if not hypothesis:
        return 1.0
    # Units joined by spaces and scored as words: for Chinese each unit is a character (a Latin word stays whole).
    rate = jiwer.wer(" ".join(reference), " ".join(hypothesis))
    return float(min(1.0, rate))
