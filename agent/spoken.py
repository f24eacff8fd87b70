"""Structured speech, parsed deterministically: digit strings, yes/no, dates.

Callers say numbers in words and the transcriber writes them either way ("four seven one two",
"4 7 1 2", "4712", "forty seven twelve"), so an agent that needs an order number, a confirmation or
a date reads it here, not from a small model's guess (DESIGN.md, principle 10). Pure functions: no
models, no clock (`spoken_date` is given today's date).

How digits are found. The text is cut into tokens (words, digit strings, punctuation). A *digit run*
is a stretch of number tokens: digit words ("zero", "nought", "one" … "nine"), "oh"/"o" as a zero
inside a run (or right before a digit word: "oh four"; "Oh, four" is an interjection), "double X" /
"triple X", tens and teens ("forty seven twelve" → "4712"), "hundred" / "thousand" ("four hundred
and twelve" → "412", "two thousand twenty four" → "2024"), and digits as written ("4712", "4,712",
"555-1234"). Fillers ("uh", "um") and punctuation inside a run do not end it; any other word does.
A run counts only if it has written digits, a "double"/"triple", or gives at least `min_spoken`
digits (default 3): "I have two kids and one dog" has no digit run (not "21"); pass `min_spoken=1`
where a single spoken digit is the expected answer ("press one").
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

MIN_SPOKEN = 3
"""Digits a run of number *words* must give to count as a digit string (written digits always count)."""

UNITS = {
    "zero": 0, "nought": 0, "naught": 0, "nil": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "niner": 9,
}
TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_OH = frozenset({"oh", "o"})
_REPEAT = {"double": 2, "triple": 3}
_FILLERS = frozenset({"uh", "uhh", "um", "umm", "uhm", "er", "erm", "ehm", "ah", "eh", "hmm", "mm"})
_NUMBER_WORDS = frozenset({*UNITS, *TEENS, *TENS, "hundred", "thousand"})
_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)|\d+|[^\W\d_]+(?:['’][^\W\d_]+)*|\S")


@dataclass(frozen=True)
class _Token:
    word: str  # lower case; a written number without its commas
    start: int
    end: int

    @property
    def written(self) -> bool:
        return self.word.isdigit()

    @property
    def punct(self) -> bool:
        return not self.word[0].isalnum()


@dataclass(frozen=True)
class _Run:
    digits: str
    start: int  # span of the run in the text, from its first number token to its last
    end: int
    words: tuple[str, ...]


def _tokens(text: str) -> list[_Token]:
    return [
        _Token(w.replace(",", "") if w[0].isdigit() else w.replace("’", "'"), m.start(), m.end())
        for m in _TOKEN.finditer(text)
        if (w := m.group().lower())
    ]


def _digit_word(tok: _Token | None) -> bool:
    """A token that says a digit or a number ("seven", "oh", "forty", "7")."""
    return tok is not None and (tok.written or tok.word in _NUMBER_WORDS or tok.word in _OH)


def _single_digit(tok: _Token | None) -> str | None:
    if tok is None:
        return None
    if tok.word in UNITS:
        return str(UNITS[tok.word])
    if tok.word in _OH:
        return "0"
    return tok.word if tok.written and len(tok.word) == 1 else None


def _is_number(toks: list[_Token], i: int, run: list[int]) -> bool:
    """Whether token i belongs to a digit run, given the run's number tokens so far."""
    tok, nxt = toks[i], toks[i + 1] if i + 1 < len(toks) else None
    w = tok.word
    if tok.written or w in _NUMBER_WORDS:
        return True
    if w in _OH:  # a zero inside a run, or right before a digit ("oh four", "oh-four"; not "oh, four")
        after = toks[i + 2] if nxt is not None and nxt.word == "-" and i + 2 < len(toks) else nxt
        return bool(run) or _digit_word(after)
    if w in _REPEAT:
        return _single_digit(nxt) is not None
    if w == "and":  # "four hundred and twelve"
        return bool(run) and toks[run[-1]].word in ("hundred", "thousand") and _digit_word(nxt)
    if w == "a":  # "a hundred"
        return not run and nxt is not None and nxt.word in ("hundred", "thousand")
    return False


def _below_hundred(words: list[str], i: int) -> tuple[int, int] | None:
    w = words[i] if i < len(words) else ""
    if w in TEENS:
        return TEENS[w], i + 1
    if w in TENS:
        unit = words[i + 1] if i + 1 < len(words) else ""
        if UNITS.get(unit, 0) > 0:  # "forty seven"; "twenty oh five" is 20, 0, 5
            return TENS[w] + UNITS[unit], i + 2
        return TENS[w], i + 1
    if w in UNITS:
        return UNITS[w], i + 1
    if w == "a":
        return 1, i + 1
    if w.isdigit() and w[0] != "0":  # "4 thousand"; a leading zero is read digit by digit
        return int(w), i + 1
    return None


def _below_thousand(words: list[str], i: int) -> tuple[int, int] | None:
    if i < len(words) and words[i] == "hundred":  # "hundred and five" (the "a" was not heard)
        got: tuple[int, int] | None = (1, i)
    else:
        got = _below_hundred(words, i)
    if got is None:
        return None
    value, j = got
    if j < len(words) and words[j] == "hundred":
        value, j = value * 100, j + 1
        j += j < len(words) and words[j] == "and"
        if rest := _below_hundred(words, j):
            value, j = value + rest[0], rest[1]
    return value, j


def _cardinal(words: list[str], i: int) -> tuple[str, int] | None:
    """A number said as one ("forty seven", "four hundred twelve", "two thousand and five") at i."""
    got = _below_thousand(words, i)
    if got is None:
        return None
    value, j = got
    if j < len(words) and words[j] == "thousand":
        value, j = value * 1000, j + 1
        j += j < len(words) and words[j] == "and"
        if rest := _below_thousand(words, j):
            value, j = value + rest[0], rest[1]
    return str(value), j


def _parse(words: list[str]) -> str:
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if w in _REPEAT and i + 1 < len(words):
            nxt = words[i + 1]
            out.append(("0" if nxt in _OH else str(UNITS.get(nxt, nxt))) * _REPEAT[w])  # "double 7", "triple five"
            i += 2
        elif w in _OH:
            out.append("0")
            i += 1
        elif w.isdigit() and w[0] == "0":
            out.append(w)
            i += 1
        elif got := _cardinal(words, i):
            out.append(got[0])
            i = got[1]
        else:  # "and" with nothing after it: not part of the number
            i += 1
    return "".join(out)


def _runs(text: str, min_spoken: int = MIN_SPOKEN) -> list[_Run]:
    toks = _tokens(text)
    groups: list[list[int]] = []
    run: list[int] = []
    for i, tok in enumerate(toks):
        if _is_number(toks, i, run):
            run.append(i)
        elif run and (tok.punct or tok.word in _FILLERS):
            continue  # "four, uh, seven": the run goes on
        elif run:
            groups.append(run)
            run = []
    if run:
        groups.append(run)
    runs = []
    for group in groups:
        words = [toks[i].word for i in group]
        while words and words[-1] == "and":
            words.pop()
            group = group[:-1]
        digits = _parse(words)
        explicit = any(toks[i].written for i in group) or any(w in _REPEAT for w in words)
        if digits and (explicit or len(digits) >= min_spoken):
            runs.append(_Run(digits, toks[group[0]].start, toks[group[-1]].end, tuple(words)))
    return runs


def digit_runs(text: str, min_spoken: int = MIN_SPOKEN) -> list[str]:
    """Every digit string said in `text`, in order: "four seven one two, then 88" → ["4712", "88"]."""
    return [r.digits for r in _runs(text, min_spoken)]


def digits(text: str, min_spoken: int = MIN_SPOKEN) -> str | None:
    """The digit string said in `text` ("it's, uh, four-seven-one-two." → "4712"; "double seven three"
    → "773"), or None if there is none. Of several runs, the longest (the first of equals): a caller
    asked for a number may add "yes, two" or "for 3 items" around it."""
    runs = digit_runs(text, min_spoken)
    return max(runs, key=len) if runs else None


_TIME_BEFORE = frozenset("at by around about till until from before after".split())
_TIME_AFTER = frozenset("am pm a p o'clock tonight today tomorrow in".split())


def _time_shaped(run: _Run, text: str) -> bool:
    """A clock time or a price said as two numbers, not a digit string: "two thirty", "twelve fifteen"
    always; "ten oh five" only after "at", "by", … or before "am", "pm", … ("room four oh one" is an id)."""
    words = list(run.words)
    first = _below_hundred(words, 0)
    if first is None or not 1 <= first[0] <= 12 or any(w.isdigit() for w in words):
        return False
    rest = words[first[1] :]
    if rest[:1] and rest[0] in _OH:
        before = re.findall(r"[\w']+", text[: run.start].lower())[-1:]
        after = re.findall(r"[\w']+", text[run.end :].lower())[:1]
        cue = bool(set(before) & _TIME_BEFORE or set(after) & _TIME_AFTER)
        return cue and len(rest) == 2 and UNITS.get(rest[1], 0) > 0
    minutes = _below_hundred(rest, 0)
    return minutes is not None and minutes[1] == len(rest) and 10 <= minutes[0] <= 59


def normalize_numbers_in_transcript(text: str) -> str:
    """`text` with spoken digit strings of 3+ digits written as digits ("my order is four seven one two"
    → "my order is 4712"), so the LLM reads the number the caller said. Ordinary number words ("two
    tickets", "one moment", "twenty five"), runs written in digits already ("4 7 1 2", "555-1234": as
    the transcriber wrote them), and clock times or prices said as two numbers ("at two thirty",
    "it's two fifty") stay."""
    out, pos = [], 0
    for run in _runs(text):
        if all(w.isdigit() for w in run.words) or _time_shaped(run, text):
            continue
        out += [text[pos : run.start], run.digits]
        pos = run.end
    return "".join(out) + text[pos:]


# --- yes / no -----------------------------------------------------------------------------------

_UNSURE = re.compile(
    r"\b(?:not (?:so |quite |really |too )?sure|(?:do not|don't|dont) know|dunno|no idea|maybe|perhaps|"
    r"not certain|can't remember|cannot remember)\b"
)
_YES_IDIOMS = re.compile(  # yes, though they hold a "no" or a "not"
    r"\b(?:no problem|no worries|not a problem|why not|(?:do not|don't|dont) mind|no doubt)\b"
)
_NO = re.compile(  # a negation takes the word it negates, and "it is not" its subject: "that is not right"
    r"\b(?:(?:\w+ )?(?:is|am|are|was|were|do|does|did) not(?: \w+)?|"
    r"no|nope|nah|naw|negative|never|wrong|incorrect|uh-uh|nuh-uh|not(?: at all| \w+)?|"
    r"\w+n't(?: \w+)?|\w+nt (?:think|want|need|like|know)|rather not)\b"
)
_YES = re.compile(
    r"\b(?:yes|yeah|yea|yep|yup|yah|aye|sure|of course|correct|right|exactly|absolutely|definitely|"
    r"certainly|affirmative|indeed|true|please do|go ahead|sounds good|that works|perfect|fine|ok|okay|"
    r"alright|all right|uh-huh|uh huh|mm-hmm|mhm|i do|i am|i did|it is|i think so|i guess so|"
    r"yes please)\b"
)


def yes_no(text: str) -> bool | None:
    """True for a yes ("yeah", "sure", "that's right", "please do"), False for a no ("nope", "not
    really", "that's wrong", "no thanks"), None for neither, both ("yes and no") or a doubt ("I'm not
    sure", "maybe"). Negations are read first, with the word they negate: "that's not right" is a no."""
    t = " ".join(re.sub(r"[^\w'’\s-]", " ", text.lower()).replace("’", "'").split())
    if _UNSURE.search(t):
        return None
    said_yes = bool(_YES_IDIOMS.search(t))
    t = _YES_IDIOMS.sub(" ", t)
    said_no = bool(_NO.search(t))
    said_yes |= bool(_YES.search(_NO.sub(" ", t)))
    return None if said_yes == said_no else said_yes


# --- dates --------------------------------------------------------------------------------------

_MONTHS = {
    name: i + 1
    for i, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",),
         ("june", "jun"), ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"),
         ("october", "oct"), ("november", "nov"), ("december", "dec")]
    )
    for name in names
}
_WEEKDAYS = {  # no "sun", "sat", "wed": words of their own ("I sat down")
    name: i
    for i, names in enumerate(
        [("monday",), ("tuesday", "tues"), ("wednesday",), ("thursday", "thurs"), ("friday",), ("saturday",),
         ("sunday",)]
    )
    for name in names
}
_ORDINAL_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9,
}
_ORDINAL_TEENS = {
    "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15,
    "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}
_UNIT_NAMES = [w for w in UNITS if 0 < UNITS[w] and w != "niner"]


def _day_words() -> dict[str, tuple[int, bool]]:
    """Every way to say a day of the month: phrase → (day, is an ordinal)."""
    days: dict[str, tuple[int, bool]] = {}
    for w, n in {**_ORDINAL_UNITS, **_ORDINAL_TEENS}.items():
        days[w] = (n, True)
    for w, n in {**{u: UNITS[u] for u in _UNIT_NAMES}, **TEENS, "twenty": 20, "thirty": 30}.items():
        days[w] = (n, False)
    for tens, base in (("twenty", 20), ("thirty", 30)):
        for w, n in _ORDINAL_UNITS.items():
            days[f"{tens} {w}"] = (base + n, True)
        for w in _UNIT_NAMES:
            days[f"{tens} {w}"] = (base + UNITS[w], False)
    return {k: v for k, v in days.items() if v[0] <= 31}


_DAYS = _day_words()
_DAY = r"(?P<day>\d{1,2}(?:st|nd|rd|th)?|" + "|".join(sorted(map(re.escape, _DAYS), key=len, reverse=True)) + ")"
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_MONTH_DAY = re.compile(rf"\b{_MONTH} (?:the )?{_DAY}\b")
_DAY_MONTH = re.compile(rf"\b(?:the )?{_DAY} (?:of )?{_MONTH}(?![a-z])")
_ISO = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_NUMERIC = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})(?:/(\d{4}|\d{2}))?(?![\d/])")
_RELATIVE = re.compile(r"\b(?:the )?(day after tomorrow|day before yesterday|today|tonight|tomorrow|yesterday)\b")
_WEEKDAY = re.compile(
    r"\b(?:(?P<which>next|this|coming|last|on) )?(?P<weekday>" + "|".join(sorted(_WEEKDAYS, key=len, reverse=True))
    + r")\b(?P<next_week> next week)?"
)
_IN = re.compile(r"\bin (?P<n>a|an|[\w ]+?) (?P<unit>days?|weeks?)\b")
_RELATIVE_DAYS = {"today": 0, "tonight": 0, "tomorrow": 1, "yesterday": -1, "day after tomorrow": 2,
                  "day before yesterday": -2}


def _day_number(s: str, month: str) -> int | None:
    if s[0].isdigit():
        return int(re.sub(r"\D", "", s))
    n, ordinal = _DAYS[s]
    return n if ordinal or month != "may" else None  # "may one ask": "may" + a plain number is a verb


def _year_after(text: str, end: int) -> int | None:
    """A year said right after a date: ", 2026", "twenty twenty six", "two thousand and twenty six"."""
    rest = text[end:]
    m = re.match(r",? (\d{4})\b", rest)
    if m:
        return int(m.group(1))
    lead = re.match(r",? ", rest)
    if not lead:
        return None
    runs = _runs(rest[lead.end() :])
    if runs and runs[0].start == 0 and len(runs[0].digits) == 4 and 1900 <= int(runs[0].digits) < 2200:
        return int(runs[0].digits)
    return None


def _date(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


RECENT_DAYS = 91
"""A date said without a year is the next one, unless it fell in the last ~3 months (then that one)."""


def _closest(month: int, day: int, today: dt.date) -> dt.date | None:
    """The date with no year said: the first on or after today - RECENT_DAYS ("May 5th" in June is the
    order placed last month; "January 10th" in December is next month's appointment)."""
    since = today - dt.timedelta(days=RECENT_DAYS)
    dates = [d for y in range(since.year, since.year + 6) if (d := _date(y, month, day)) and d >= since]
    return dates[0] if dates else None


def spoken_date(text: str, today: dt.date) -> dt.date | None:
    """The date said in `text`, or None: "today", "tomorrow", "the day after tomorrow", "yesterday",
    "in three days", "in a week"; weekdays: "friday" / "on friday" / "next friday" → the first after
    today, "this friday" → today if it is Friday, "last friday" → the last before today, "friday next
    week" → the one in the next Monday-to-Sunday week; "may fifth", "the 5th of may", "may 5, 2026",
    "may fifth twenty twenty six"; "5/5" and "5/5/26" (month first), "2026-05-05". A date said without
    a year is the next one, or one of the last three months (`RECENT_DAYS`): a booking is ahead, an
    order just behind. An impossible date ("February 30th") is None."""
    t = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower().replace("’", "'"))  # "twenty-fifth"
    t = " ".join(t.replace(",", " , ").split()).replace(" ,", ",")
    for found in _written_date(t, today), _said_date(t, today), _relative_date(t, today):
        if found is not None:
            return found
    return None


def _written_date(t: str, today: dt.date) -> dt.date | None:
    if (m := _ISO.search(t)) and (d := _date(int(m.group(1)), int(m.group(2)), int(m.group(3)))):
        return d
    for m in _NUMERIC.finditer(t):
        month, day, year = int(m.group(1)), int(m.group(2)), m.group(3)
        d = _closest(month, day, today) if year is None else _date(int(year) + (2000 if len(year) == 2 else 0),
                                                                     month, day)
        if d is not None:
            return d
    return None


def _said_date(t: str, today: dt.date) -> dt.date | None:
    for pattern in (_MONTH_DAY, _DAY_MONTH):
        for m in pattern.finditer(t):
            month, day_s = m.group("month"), m.group("day")
            day = _day_number(day_s, month)
            if day is None or (pattern is _DAY_MONTH and month == "may" and " of " not in m.group()
                               and not day_s[0].isdigit()):
                continue  # "wait a second may I…" is not the 2nd of May
            year = _year_after(t, m.end())
            d = _date(year, _MONTHS[month], day) if year else _closest(_MONTHS[month], day, today)
            if d is not None:
                return d
    return None


def _relative_date(t: str, today: dt.date) -> dt.date | None:
    if m := _RELATIVE.search(t):
        return today + dt.timedelta(days=_RELATIVE_DAYS[m.group(1)])
    if m := _WEEKDAY.search(t):
        return _weekday(m, today)
    for m in _IN.finditer(t):
        n = 1 if m.group("n") in ("a", "an") else _small_number(m.group("n"))
        if n is not None:
            return today + dt.timedelta(days=n * (7 if m.group("unit").startswith("week") else 1))
    return None


def _small_number(text: str) -> int | None:
    runs = _runs(text, min_spoken=1)
    return int(runs[0].digits) if len(runs) == 1 and runs[0].start == 0 and runs[0].end == len(text) else None


def _weekday(m: re.Match[str], today: dt.date) -> dt.date:
    wanted, which = _WEEKDAYS[m.group("weekday")], m.group("which")
    ahead = (wanted - today.weekday()) % 7
    if m.group("next_week"):
        return today + dt.timedelta(days=7 - today.weekday() + wanted)
    if which == "last":
        return today - dt.timedelta(days=(today.weekday() - wanted) % 7 or 7)
    if which == "this":
        return today + dt.timedelta(days=ahead)
    return today + dt.timedelta(days=ahead or 7)
