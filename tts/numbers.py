"""Numbers that are not quantities: how a voice should read ids, phone numbers, ISO dates and ranges.

The phonemizer (espeak-ng, inside Piper) reads every digit string as a quantity: "4712" is "four
thousand seven hundred twelve", "555-1234" is "five hundred fifty-five dash one thousand…", and
"2-3" is "two dash three". It reads single digits one by one, so an id is handed to it as "4 7 1 2"
(checked on its phonemes: "four seven one two"). These functions are pure and work on one word of
`tts/text.py`'s word stream; the word before it is the only context.
"""

from __future__ import annotations

import re

MAX_ID_DIGITS = 24
"""Longer digit strings are not ids but noise; they are left to the phonemizer as they are."""

ID_WORDS = frozenset(
    "order number no. # id code account acct acct. reference ref ref. confirmation pin extension ext ext. "
    "ticket flight room phone tel tel. booking tracking invoice serial".split()
)
"""After one of these words a digit string of 3+ digits is an id ("order 412", "room 1204"). Two digits
stay a number ("room 12", "flight 12" are said "twelve"): the same either way for one digit, and
reading the number is how people say short ones."""

_OPENERS = "\"'([{«“‘"
_CLOSERS = ".,;:!?\"')]}»”’"
_WRAPPED = re.compile(f"([{re.escape(_OPENERS)}]*)(.*?)([{re.escape(_CLOSERS)}]*)", re.DOTALL)
# A phone number: an optional country or trunk code, then 3-3-4 digits ("1-800-555-1234",
# "555.123.4567") or 3-4 with hyphens ("555-1234"; "123.4567" is a decimal).
_PHONE = re.compile(r"(?:\d{1,3}[-.])?\d{3}[-.]\d{3}[-.]\d{4}|(?:\d{1,3}-)?\d{3}-\d{4}")
_ISO_DATE = re.compile(r"(\d{4})-(\d\d)(?:-(\d\d))?")
_MONTHS = (
    "January February March April May June July August September October November December".split()
)
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
# "N-M" inside a token: not glued to a word, a decimal or another hyphenated number ("A-1",
# "2024-05-01", "1-800-…" are not ranges); "2-3-year-old" still is.
RANGE = re.compile(rf"(?<![\w.,:/-])({_NUM})-({_NUM})(?!\d|[.,:/]\d|-[\dA-Z])")


def spell_digits(digits: str) -> str:
    """Digits one by one, as the phonemizer reads them right: "0042" → "0 0 4 2"."""
    return " ".join(digits)


def is_phone(text: str) -> bool:
    """Whether `text` is shaped like a phone number. A bare 3-4 pair of round numbers ("100-1000",
    "250-1500") is a range, not a number to dial: ranges are round, local numbers seldom are."""
    if not _PHONE.fullmatch(text):
        return False
    parts = re.split(r"[-.]", text)
    return not (len(parts) == 2 and parts[0].endswith("0") and parts[1].endswith("00"))


def _leading_zero(number: str) -> bool:
    whole = number.split(".")[0]
    return len(whole) > 1 and whole[0] == "0"


def range_to(m: re.Match[str]) -> str:
    """`RANGE`'s replacement: "2-3" → "2 to 3". Phone numbers and numbers with a leading zero (parts
    of dates, ids) are left for `read_number`. A descending pair reads "to" too: a score ("5-3") is
    said so; a subtraction written without spaces is rare in a reply and read wrong either way."""
    a, b = m.group(1), m.group(2)
    if _leading_zero(a) or _leading_zero(b) or is_phone(m.group()):
        return m.group()
    return f"{a} to {b}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date(m: re.Match[str]) -> str | None:
    year, month, day = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 1 <= month <= 12:
        return None
    if day is None:
        return f"{_MONTHS[month - 1]} {year}"
    if not 1 <= int(day) <= 31:
        return None
    return f"{_MONTHS[month - 1]} {_ordinal(int(day))}, {year}"


def is_id(digits: str, prev: str) -> bool:
    """Whether a bare digit string is an id, read digit by digit: 5+ digits (unless a round amount,
    ending in 00: "10000", "250000"), a leading zero ("0042", "07"), or 3+ digits after an id word
    (`ID_WORDS`: "order 412", "#4712"). Amounts, years ("in 2024"), counts ("144") stay numbers."""
    if len(digits) > MAX_ID_DIGITS or len(digits) < 2:
        return False
    if digits[0] == "0":
        return True
    if len(digits) >= 3 and _id_word(prev):
        return True
    return len(digits) >= 5 and not digits.endswith("00")


def _id_word(word: str) -> bool:
    bare = word.lower().lstrip(_OPENERS).rstrip("\"')]}»”’,:")
    return bare in ID_WORDS  # "order." ends a sentence: what follows is not its number ("no." is a word)


def read_number(word: str, prev: str = "") -> str:
    """One word of normalized text as it should be spoken, given the word before it: ids and phone
    numbers digit by digit ("order 4712." → "4 7 1 2."; "555-1234" → "5 5 5, 1 2 3 4"), ISO dates
    in words ("2024-05-01" → "May 1st, 2024"); any other word unchanged. The result may hold spaces;
    reading it again changes nothing."""
    if not any(c.isdigit() for c in word):
        return word
    m = _WRAPPED.fullmatch(word)
    assert m is not None, "every string matches: all three groups may be empty"
    lead, core, trail = m.groups()
    if core.isascii() and core.isdigit():
        return lead + spell_digits(core) + trail if is_id(core, prev) else word
    if date := _ISO_DATE.fullmatch(core):
        spoken = _date(date)
        return lead + spoken + trail if spoken else word
    if is_phone(core):
        return lead + ", ".join(spell_digits(g) for g in re.split(r"[-.]", core)) + trail
    return word
