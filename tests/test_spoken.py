"""Unit tests of agent/spoken.py: digit strings, yes/no and dates parsed from what a caller said.

Pure logic: no models, no fakes, no clock (dates are parsed against a fixed "today").
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spoken import RECENT_DAYS, digit_runs, digits, normalize_numbers_in_transcript, spoken_date, yes_no

WORDS = {  # how a caller may say each digit
    "0": ["zero", "oh", "o", "nought"],
    "1": ["one"], "2": ["two"], "3": ["three"], "4": ["four"], "5": ["five"],
    "6": ["six"], "7": ["seven"], "8": ["eight"], "9": ["nine", "niner"],
}
TODAY = dt.date(2026, 5, 1)  # a Friday


# --- digits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("four seven one two", "4712"),
        ("4 7 1 2", "4712"),
        ("4712", "4712"),
        ("forty seven twelve", "4712"),
        ("forty-seven twelve", "4712"),
        ("Four-seven-one-two.", "4712"),
        ("it's, uh, four-seven-one-two.", "4712"),
        ("Four, seven, um, one, two.", "4712"),
        ("four seven. one two", "4712"),
        ("double seven three", "773"),
        ("triple five", "555"),
        ("double oh seven", "007"),
        ("five double two one", "5221"),
        ("double 7 3", "773"),
        ("four oh one", "401"),
        ("four o one", "401"),
        ("oh four one two", "0412"),
        ("oh-four-one-two", "0412"),
        ("zero zero four two", "0042"),
        ("nought nought seven", "007"),
        ("nine niner one", "991"),
        ("twenty oh five", "2005"),
        ("nineteen eighty four", "1984"),
        ("twenty twenty six", "2026"),
        ("two thousand twenty four", "2024"),
        ("two thousand and five", "2005"),
        ("four hundred and twelve", "412"),
        ("four hundred twelve", "412"),
        ("forty seven hundred", "4700"),
        ("a hundred", "100"),
        ("one hundred", "100"),
        ("seven hundred thousand", "700000"),
        ("It's 4,712.", "4712"),
        ("#4712", "4712"),
        ("555-1234", "5551234"),
        ("four 7 one 2", "4712"),
        ("My order number is four seven one two, I think.", "4712"),
        ("Yes, it's 88231.", "88231"),
        ("FOUR SEVEN ONE TWO", "4712"),
        # several runs: the longest; of equals, the first
        ("two, I mean four seven one two", "4712"),
        ("four seven one, no wait, 8 8 2 3", "8823"),
        ("123 and 456", "123"),
        ("I have 2 kids", "2"),  # written digits always count
        # nothing that is a digit string
        ("I have two kids and one dog", None),
        ("one moment please", None),
        ("two tickets", None),
        ("twenty five", None),
        ("Oh, I see.", None),
        ("Oh, okay, one sec", None),
        ("a double room for two", None),
        ("", None),
        ("hello there", None),
        ("the first and the second", None),
    ],
)
def test_digits(text: str, expected: str | None) -> None:
    assert digits(text) == expected


def test_digit_runs_in_order() -> None:
    assert digit_runs("four seven one two, then 88, then nine nine nine") == ["4712", "88", "999"]
    assert digit_runs("two kids, one dog") == []
    assert digit_runs("press one", min_spoken=1) == ["1"]
    assert digits("seven", min_spoken=1) == "7"
    assert digits("forty two", min_spoken=2) == "42"
    assert digit_runs("one two and three four five") == ["345"]  # "and" ends a run of digits


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789", min_size=3, max_size=16), st.data())
def test_spoken_digits_round_trip(number: str, data: st.DataObject) -> None:
    words = [data.draw(st.sampled_from(WORDS[d])) for d in number]
    gaps = [data.draw(st.sampled_from([" ", " ", ", ", "-", " uh ", ". ", " , um, "])) for _ in words[1:]]
    if words[0] in ("oh", "o"):  # "Oh, four…" is an interjection, "oh four" and "oh-four" a zero
        gaps[0] = data.draw(st.sampled_from([" ", "-"]))
    text = words[0] + "".join(g + w for g, w in zip(gaps, words[1:]))
    assert digits(text) == number
    assert digits(f"It's {text}.") == number
    assert digit_runs(f"um, {text}, yes") == [number]
    assert normalize_numbers_in_transcript(f"my order is {text}, thanks") == f"my order is {number}, thanks"


@settings(max_examples=200, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=12))
def test_written_and_spaced_digits_round_trip(number: str) -> None:
    assert digits(number) == number
    assert digits(" ".join(number)) == number
    assert digits(" ".join("zero" if d == "0" else WORDS[d][0] for d in number), min_spoken=1) == number


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("0123456789"), st.integers(1, 3)), min_size=1, max_size=6))
def test_double_and_triple(groups: list[tuple[str, int]]) -> None:
    number = "".join(d * n for d, n in groups)
    said = " ".join({1: "", 2: "double ", 3: "triple "}[n] + ("zero" if d == "0" else WORDS[d][0]) for d, n in groups)
    assert digits(said, min_spoken=1) == number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my order is four seven one two", "my order is 4712"),
        ("My order is four-seven-one-two.", "My order is 4712."),
        ("it's, uh, four seven one two, thanks", "it's, uh, 4712, thanks"),
        ("order number double seven three, please.", "order number 773, please."),
        ("room four oh one", "room 401"),
        ("I was born in nineteen eighty four", "I was born in 1984"),
        ("code zero zero four two and that's it", "code 0042 and that's it"),
        ("four hundred and twelve dollars", "412 dollars"),
        # ordinary number words stay
        ("two tickets please", "two tickets please"),
        ("one moment", "one moment"),
        ("I have two kids and one dog", "I have two kids and one dog"),
        ("twenty five people", "twenty five people"),
        ("Oh, one more thing", "Oh, one more thing"),
        # times and prices said as two numbers stay
        ("at two thirty", "at two thirty"),
        ("see you at ten oh five", "see you at ten oh five"),
        ("it's two fifty", "it's two fifty"),
        ("twelve fifteen works", "twelve fifteen works"),
        # what the transcriber wrote in digits stays as written
        ("4 7 1 2 is it", "4 7 1 2 is it"),
        ("call 555-1234", "call 555-1234"),
        ("order 4712", "order 4712"),
        ("", ""),
    ],
)
def test_normalize_numbers_in_transcript(text: str, expected: str) -> None:
    assert normalize_numbers_in_transcript(text) == expected


# --- yes / no -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "yes", "Yes.", "YES!", "yeah", "Yeah, that's it.", "yep", "yup", "sure", "Sure thing.", "correct",
        "That's correct.", "that's right", "That’s right", "right", "exactly", "absolutely", "of course",
        "please do", "yes please", "go ahead", "sounds good", "okay", "OK", "alright", "uh-huh", "mm-hmm",
        "I think so", "no problem", "no worries, go ahead", "why not", "I don't mind", "it is", "I do",
        "um, yeah", "Yes, that's correct, thank you.",
    ],
)
def test_yes(text: str) -> None:
    assert yes_no(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "no", "No.", "NO!", "nope", "nah", "not really", "that's wrong", "That is wrong.", "no thanks",
        "No, thank you.", "incorrect", "That's not right.", "that is not right", "that isn't correct",
        "It's not correct", "I don't think so", "not at all", "never", "negative", "uh-uh", "I do not",
        "Don't.", "I'd rather not", "no, no, no", "not now",
    ],
)
def test_no(text: str) -> None:
    assert yes_no(text) is False


@pytest.mark.parametrize(
    "text",
    [
        "", "hello?", "what?", "Can you repeat that?", "four seven one two", "I'm not sure", "maybe",
        "I don't know", "yes and no", "yeah no", "No, that's right", "Yes. No.", "perhaps", "no idea",
        "yesterday", "nothing", "I noticed", "notable",
    ],
)
def test_neither(text: str) -> None:
    assert yes_no(text) is None


# --- dates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", TODAY),
        ("Today, please.", TODAY),
        ("tomorrow", dt.date(2026, 5, 2)),
        ("How about tomorrow?", dt.date(2026, 5, 2)),
        ("yesterday", dt.date(2026, 4, 30)),
        ("the day after tomorrow", dt.date(2026, 5, 3)),
        ("day before yesterday", dt.date(2026, 4, 29)),
        # weekdays (TODAY is a Friday)
        ("next monday", dt.date(2026, 5, 4)),
        ("Monday", dt.date(2026, 5, 4)),
        ("on friday", dt.date(2026, 5, 8)),
        ("this friday", TODAY),
        ("this sunday", dt.date(2026, 5, 3)),
        ("last friday", dt.date(2026, 4, 24)),
        ("last monday", dt.date(2026, 4, 27)),
        ("wednesday next week", dt.date(2026, 5, 6)),
        ("on Thursday, I think", dt.date(2026, 5, 7)),
        ("in three days", dt.date(2026, 5, 4)),
        ("in 10 days", dt.date(2026, 5, 11)),
        ("in a week", dt.date(2026, 5, 8)),
        ("in two weeks", dt.date(2026, 5, 15)),
        # month and day
        ("may fifth", dt.date(2026, 5, 5)),
        ("May 5th", dt.date(2026, 5, 5)),
        ("may the fifth", dt.date(2026, 5, 5)),
        ("the 5th of may", dt.date(2026, 5, 5)),
        ("the fifth of May", dt.date(2026, 5, 5)),
        ("5 may", dt.date(2026, 5, 5)),
        ("June twenty-first", dt.date(2026, 6, 21)),
        ("on the thirty first of december", dt.date(2026, 12, 31)),
        ("march 3rd", dt.date(2026, 3, 3)),  # two months ago: that one
        ("january 3rd", dt.date(2027, 1, 3)),  # over three months ago: next year's
        ("april second", dt.date(2026, 4, 2)),  # last month: that one
        ("Sept. 9", dt.date(2026, 9, 9)),
        ("may 5, 2027", dt.date(2027, 5, 5)),
        ("may fifth twenty twenty seven", dt.date(2027, 5, 5)),
        ("the 5th of may 2025", dt.date(2025, 5, 5)),
        ("january tenth two thousand and thirty", dt.date(2030, 1, 10)),
        # written
        ("5/5", dt.date(2026, 5, 5)),
        ("on 12/24 please", dt.date(2026, 12, 24)),
        ("5/5/26", dt.date(2026, 5, 5)),
        ("5/5/2027", dt.date(2027, 5, 5)),
        ("2026-05-05", dt.date(2026, 5, 5)),
        ("24/7 support, monday", dt.date(2026, 5, 4)),  # not a date: the next one
        # none
        ("", None),
        ("whenever", None),
        ("february 30th", None),
        ("wait a second may I ask", None),
        ("may one ask", None),
        ("I sat down on the sun deck", None),
        ("four seven one two", None),
        ("13/13", None),
    ],
)
def test_spoken_date(text: str, expected: dt.date | None) -> None:
    assert spoken_date(text, TODAY) == expected


MONTHS = "January February March April May June July August September October November December".split()
ORDINALS = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
    "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
    "twentieth",
]
ORDINALS += [f"twenty {w}" for w in ORDINALS[:9]] + ["thirtieth", "thirty first"]


@settings(max_examples=300, deadline=None)
@given(st.dates(dt.date(1990, 1, 1), dt.date(2100, 12, 31)), st.dates(dt.date(2000, 1, 1), dt.date(2090, 12, 31)))
def test_dates_round_trip(date: dt.date, today: dt.date) -> None:
    month, day = MONTHS[date.month - 1], ORDINALS[date.day - 1]
    assert spoken_date(date.isoformat(), today) == date
    assert spoken_date(f"{month} {date.day}, {date.year}", today) == date
    assert spoken_date(f"the {day} of {month} {date.year}", today) == date
    assert spoken_date(f"{date.month}/{date.day}/{date.year}", today) == date
    got = spoken_date(f"on {month} {day}", today)  # no year said: the next one, or a recent one
    assert got is not None and (got.month, got.day) == (date.month, date.day)
    assert -RECENT_DAYS <= (got - today).days < 366 * (4 if (date.month, date.day) == (2, 29) else 1)
