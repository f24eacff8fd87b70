"""Unit tests of tts/text.py: speakable normalization and incremental phrase splitting.

Pure logic: no models, no fakes, no clock; the whole file runs in a few seconds.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tts.text import MAX_TOKEN_CHARS, PhraseSplitter, normalize_for_speech


def split(text: str, deltas: list[str] | None = None, **options: int) -> list[str]:
    """All phrases of `text`, fed as `deltas` (default: the whole text at once), then flushed."""
    splitter = PhraseSplitter(**options)
    phrases = [p for d in (deltas if deltas is not None else [text]) for p in splitter.push(d)]
    return phrases + splitter.flush()


def chars(text: str) -> list[str]:
    return list(text)


def spoken(text: str) -> list[str]:
    """The words of normalized text that say something (not a pause like "—")."""
    return [w for w in text.split() if any(c.isalnum() for c in w)]


# --- normalize_for_speech ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # markdown
        ("**Bold** and _italic_ and `code` here.", "Bold and italic and code here."),
        ("## Opening hours\nWe open at nine.", "Opening hours. We open at nine."),
        (
            "Steps:\n- Preheat the oven\n* Mix\n+ Bake\n1. Cool\n2) Serve",
            "Steps: Preheat the oven. Mix. Bake. Cool. Serve",
        ),
        ("```python\nprint(1)\n```\nDone.", "print(1). Done."),
        ("See [the docs](https://example.com/a_(b)) now.", "See the docs now."),
        ("![a cat](cat.png) Cute.", "a cat Cute."),
        ("snake_case and ~~old~~ new", "snake case and old new"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "a b. 1 2"),
        # URLs, emoji, tags, control characters, entities
        ("Visit https://example.com/path?x=1&y=2. Then call.", "Visit a link. Then call."),
        ("Go to www.example.org, then <https://x.io>!", "Go to a link, then a link!"),
        ("Great job! 🎉🎉 👍🏽 ❤️ Really ✨great✨.", "Great job! Really great."),
        ('<speak>Hello <break time="1s"/> there</speak>', "Hello there"),
        ('<prosody rate="slow" pitch="high">Slow</prosody> end', "Slow end"),
        ("<b>bold</b><i>it</i> <!-- a note --> text", "bold it text"),
        ("x\x00y\x07z \u200b tab\tsep\r\nline", "xyz tab sep. line"),
        ("Fish &amp; chips &lt;b&gt;hot&lt;/b&gt;", "Fish and chips hot"),
        # numbers and symbols
        ("It costs $3.50 or $1 or $0.99.", "It costs 3 dollars and 50 cents or 1 dollar or 99 cents."),
        (
            "$1,299.99, €5, £2.01, 50€, $5M, $3.5",
            "1,299 dollars and 99 cents, 5 euros, 2 pounds and 1 penny, 50 euros, 5 million dollars, 3.5 dollars",
        ),
        ("50% at 20°C, or 68°F.", "50 percent at 20 degrees Celsius, or 68 degrees Fahrenheit."),
        ("AT&T & R&D; a+b=c; C# is #1.", "AT&T and R&D; a plus b equals c; C sharp is number 1."),
        ("At 10:30, 10:05, 9:00 or 10:00am.", "At 10 30, 10 oh 5, 9 o'clock or 10 am."),
        ("Pi is 3.14, about 1,000 or ~5 km.", "Pi is 3.14, about 1,000 or about 5 km."),
        ("2020–2021 -- wow — yes - no", "2020 to 2021 — wow — yes — no"),
        ("Open 09:30 to 09:05.", "Open 9 30 to 9 oh 5."),
        ("Well... I think so… ok", "Well, I think so, ok"),
        ("a -> b → c", "a to b to c"),
        # what must survive untouched
        (
            "Dr. Smith, e.g. in the U.S., met Mrs. Jones at 10 a.m. today!",
            "Dr. Smith, e.g. in the U.S., met Mrs. Jones at 10 a.m. today!",
        ),
        ("Really? Yes; no: maybe.", "Really? Yes; no: maybe."),
    ],
)
def test_normalize_for_speech(text: str, expected: str) -> None:
    assert normalize_for_speech(text) == expected


@pytest.mark.parametrize(
    "text", ["", "   ", "\n\t \r\n", "😀🎉👍🏽", "** __ ``", "<speak></speak>", "\x00\x01", "- \n# \n"]
)
def test_nothing_speakable_gives_nothing(text: str) -> None:
    assert normalize_for_speech(text) == ""
    assert split(text) == []
    assert split(text, chars(text)) == []


def test_overlong_tokens_are_bounded() -> None:
    url = "https://example.com/" + "a" * 500
    assert normalize_for_speech(f"Open {url} now.") == "Open a link now."
    word = "x" * (2 * MAX_TOKEN_CHARS + 10)
    assert normalize_for_speech(word) == " ".join(["x" * MAX_TOKEN_CHARS] * 2 + ["x" * 10])


# --- numbers that are not quantities (tts/numbers.py) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a number that opens a phrase, or a line, is spoken unless it is a list's marker
        ("144.", "144."),
        ("144. That is the answer.", "144. That is the answer."),
        ("5) then stir", "5) then stir"),
        ("12 multiplied by 12 equals\n144.", "12 multiplied by 12 equals. 144."),
        ("Steps:\n2. Mix\n3) Bake", "Steps: Mix. Bake"),  # after a line break, followed by words
        ("1. Preheat the oven\n2. Mix", "Preheat the oven. Mix"),  # "1." opening the text: a list
        ("1. 2. Go", "2. Go"),  # only "1." opens a list on the first line
        ("1.\n1. 3", "3"),  # markers in a row are one marker
        ("Total:\n12.", "Total: 12."),  # nothing follows: a number
        ("Total:\n144. That is it.", "Total: 144. That is it."),  # three digits: never a marker
    ],
)
def test_numbers_at_line_and_phrase_starts(text: str, expected: str) -> None:
    assert normalize_for_speech(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It takes 2-3 minutes.", "It takes 2 to 3 minutes."),
        ("2-3", "2 to 3"),
        ("2–3 days, 1.5-2.5 km, 5-10% off", "2 to 3 days, 1.5 to 2.5 km, 5 to 10 percent off"),
        ("5,000-10,000 people, ages 18-25, 100-1000 units", "5,000 to 10,000 people, ages 18 to 25, 100 to 1000 units"),
        ("From 10:30-11:30 for $5-10.", "From 10 30 to 11 30 for 5 dollars to 10."),
        ("a 2-3-year-old", "a 2 to 3-year-old"),
        ("The score was 5-3.", "The score was 5 to 3."),
        # not ranges: phone numbers read digit by digit in groups, ISO dates in words, names as they are
        ("Call 555-1234 or 1-800-555-1234.", "Call 5 5 5, 1 2 3 4 or 1, 8 0 0, 5 5 5, 1 2 3 4."),
        ("Or 555.123.4567, not 123.4567.", "Or 5 5 5, 1 2 3, 4 5 6 7, not 123.4567."),
        ("On 2024-05-01 or 2026-12-22 (2024-03).", "On May 1st, 2024 or December 22nd, 2026 (March 2024)."),
        ("2024-13-45 and 05-10", "2024-13-45 and 05-10"),
        ("COVID-19, A-1, N95-100", "COVID-19, A-1, N95-100"),
    ],
)
def test_ranges_phones_and_dates(text: str, expected: str) -> None:
    assert normalize_for_speech(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # ids: 5+ digits, a leading zero, or 3+ digits after an id word
        ("Your order 88231 shipped.", "Your order 8 8 2 3 1 shipped."),
        ("Ticket #4712.", "Ticket number 4 7 1 2."),
        ("The code is 0042, and 007.", "The code is 0 0 4 2, and 0 0 7."),
        ("code 0042", "code 0 0 4 2"),
        ("Order no. 4712 and ID 905", "Order no. 4 7 1 2 and ID 9 0 5"),
        ("Your confirmation: 4712 (room 1204).", "Your confirmation: 4 7 1 2 (room 1 2 0 4)."),
        ("PIN 1234, account 99, flight 370", "PIN 1 2 3 4, account 99, flight 3 7 0"),
        ("Reference 12345678901234567890.", "Reference 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0."),
        ("**Order**: 4712", "Order: 4 7 1 2"),
        # quantities stay numbers
        ("It was 4712 in 2024 at 10:30.", "It was 4712 in 2024 at 10 30."),
        ("12 apples, 144 pears, 10000 steps, 250000 people", "12 apples, 144 pears, 10000 steps, 250000 people"),
        ("$12345 or 12345€ or $1,299", "12,345 dollars or 12,345 euros or 1,299 dollars"),
        ("Pi is 3.14159, about 1,000,000.", "Pi is 3.14159, about 1,000,000."),
        ("I placed the order. 4712 people came.", "I placed the order. 4712 people came."),
        ("room 12, number 7", "room 12, number 7"),
        ("1" * 30, "1" * 30),  # not an id: noise, as it is
    ],
)
def test_ids_are_read_digit_by_digit(text: str, expected: str) -> None:
    assert normalize_for_speech(text) == expected


def test_ids_streamed_in_deltas() -> None:
    text = "Sure thing, your order number 4712 ships today."
    assert split(text, chars(text), first_max_words=5) == ["Sure thing, your order number", "4 7 1 2 ships today."]
    text = "Okay, order 88231, ticket 0042."
    assert split(text, chars(text), first_min_words=1) == ["Okay,", "order 8 8 2 3 1, ticket 0 0 4 2."]
    # the digits of an id are one word of the splitter: a cut never falls inside them
    assert split("a b c d e order 88231 yes") == ["a b c d e order 8 8 2 3 1", "yes"]
    assert split("one two three four five six 555-1234 ok") == ["one two three four five six 5 5 5, 1 2 3 4", "ok"]


def test_phrase_cut_before_a_number_keeps_it() -> None:
    """The bug heard in a call: "12 multiplied by 12 equals" | "144." and the second phrase, normalized
    again by the TTS stream, came out empty."""
    phrases = split("12 multiplied by 12 equals 144. Anything else?", first_max_words=5)
    assert phrases == ["12 multiplied by 12 equals", "144.", "Anything else?"]
    assert [normalize_for_speech(p) for p in phrases] == phrases


# --- PhraseSplitter ---------------------------------------------------------------------------

REPLY = "Sure, I can help with that. The store opens at 10:30 a.m. on Monday."


def test_first_phrase_cut_at_first_clause() -> None:
    assert split(REPLY, chars(REPLY), first_min_words=1) == [
        "Sure,",
        "I can help with that.",
        "The store opens at 10 30 a.m. on Monday.",
    ]


def test_first_phrase_waits_for_first_min_words_by_default() -> None:
    assert split(REPLY, chars(REPLY)) == ["Sure, I can help with that.", "The store opens at 10 30 a.m. on Monday."]
    assert split("Okay, so the plan, as agreed, is simple.") == ["Okay, so the plan,", "as agreed, is simple."]


def test_first_phrase_forced_after_first_max_words() -> None:
    text = "one two three four five six seven eight nine ten"
    assert split(text, chars(text)) == ["one two three four five six seven", "eight nine ten"]


def test_later_phrases_cut_at_clauses_only_after_min_words() -> None:
    text = "Hello there. Yes, and then, we went to the market, and bought apples. Done."
    assert split(text, chars(text)) == [
        "Hello there.",
        "Yes, and then, we went to the market,",
        "and bought apples.",
        "Done.",
    ]


def test_no_split_in_abbreviations_numbers_or_ellipses() -> None:
    text = "Dr. Smith met Mr. Jones, e.g. at 3.5 km from the U.S. border. It cost 1,000 dollars... Fine. Bye!"
    assert split(text, chars(text)) == [
        "Dr. Smith met Mr. Jones,",
        "e.g. at 3.5 km from the U.S. border.",
        "It cost 1,000 dollars, Fine.",
        "Bye!",
    ]


def test_dot_at_end_of_buffer_waits_for_next_character() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Pi is 3.") == []
    assert splitter.push("14 today") == []
    assert splitter.push(". ") == ["Pi is 3.14 today."]
    assert splitter.push("It is 3.") == []
    assert splitter.flush() == ["It is 3."]


def test_line_breaks_end_phrases() -> None:
    text = "Here are the steps:\n- Preheat the oven\n- Mix **the** flour"
    assert split(text, chars(text)) == ["Here are the steps:", "Preheat the oven.", "Mix the flour"]


def test_markdown_split_across_deltas() -> None:
    deltas = ["**Sa", "le*", "* on", " $3", ".", "50 ", "[to", "day](ht", "tps://x.", "com). 🎉", "Bye", "."]
    assert split("".join(deltas), deltas, first_max_words=12) == ["Sale on 3 dollars and 50 cents today.", "Bye."]


def test_max_chars_cut_at_word_boundary() -> None:
    text = " ".join(f"word{i}" for i in range(60))
    phrases = split(text, chars(text), max_chars=40)
    assert all(len(p) <= 40 for p in phrases)
    assert " ".join(phrases) == text
    assert phrases[0] == "word0 word1 word2 word3 word4 word5"  # 35 chars; with word6, 41
    assert phrases[1] == "word6 word7 word8 word9 word10 word11"


def test_long_unpunctuated_reply_streams_in_bounded_memory() -> None:
    vocab = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again", "and"]
    words = [vocab[(i * 7 + i // 3) % len(vocab)] for i in range(5000)]
    text = " ".join(words)[:20_000]
    assert len(text) == 20_000
    splitter = PhraseSplitter()
    phrases: list[str] = []
    high_water = 0
    for i in range(0, len(text), 4):  # 4-character "tokens"
        phrases += splitter.push(text[i : i + 4])
        high_water = max(high_water, splitter.buffered_chars)
    phrases += splitter.flush()
    assert high_water <= splitter.max_chars + 2 * MAX_TOKEN_CHARS
    assert high_water <= splitter.max_chars + 10  # short words: little beyond one phrase
    assert all(0 < len(p) <= splitter.max_chars for p in phrases)
    assert len(phrases[0].split()) == 7
    assert len(phrases) > 60
    assert " ".join(phrases) == text


def test_overlong_token_streams_in_bounded_memory() -> None:
    text = "Open https://example.com/" + "a" * 5000 + " now. " + "y" * 5000
    splitter = PhraseSplitter()
    phrases = []
    for c in text:
        phrases += splitter.push(c)
        assert splitter.buffered_chars <= splitter.max_chars + 2 * MAX_TOKEN_CHARS
    phrases += splitter.flush()
    assert phrases[0] == "Open a link now."
    assert " ".join(phrases) == normalize_for_speech(text)


def test_flush_readies_the_splitter_for_the_next_reply() -> None:
    splitter = PhraseSplitter(first_min_words=1)
    assert splitter.push("Yes, it is done") == ["Yes,"]
    assert splitter.flush() == ["it is done"]
    assert splitter.push("Sure, again ") == ["Sure,"]


def test_rejects_inconsistent_options() -> None:
    with pytest.raises(ValueError, match="first_min_words"):
        PhraseSplitter(first_min_words=5, first_max_words=3)
    with pytest.raises(ValueError, match="max_chars"):
        PhraseSplitter(max_chars=0)


# --- properties -------------------------------------------------------------------------------

ALPHABET = "abcXYZ é0123456789 .,?!:;-—–…'\"()[]*_#`~>|+=$€£%&°@</\n\t\r\x00\x07\u200b😀🎉"
SNIPPETS = [
    "Dr.", "e.g.", "U.S.", "3.5", "10:30", "1,000", "$3.50", "50%", "...", " ", "\n", "\n- ", "\n1. ",
    "https://x.com/a_b", "www.a.io", "[link text](http://u.v/w)", '<break time="1s"/>', "<speak>",
    "</speak>", "**", "```py", "&amp;", "&lt;", "<!--", "-->", "word", "Hello", "x" * 120,
    "144.", "1. ", "\n2) ", "12)", "order ", "#", "no. ", "4712", "0042", "88231", "555-1234", "2-3",
    "2024-05-01", "1-800-555-1234", "$12345", " 7",
]
texts = st.lists(st.one_of(st.text(ALPHABET, max_size=12), st.sampled_from(SNIPPETS)), max_size=25).map("".join)
options = st.fixed_dictionaries(
    {
        "first_min_words": st.integers(1, 3),
        "first_max_words": st.integers(3, 8),
        "min_words": st.integers(1, 8),
        "max_chars": st.integers(20, 300),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(texts, st.text(max_size=60)))
@example("°" + "x" * 93 + "!")  # expansion past MAX_TOKEN_CHARS, then punctuation
@example("0\n0")  # a line's closing "." must not turn a number into a list marker
def test_normalization_is_idempotent(text: str) -> None:
    once = normalize_for_speech(text)
    assert normalize_for_speech(once) == once
    assert once == once.strip() and "  " not in once and "\n" not in once


@settings(max_examples=300, deadline=None)
@given(texts, options, st.data())
def test_streamed_phrases_join_to_normalized_text(text: str, opts: dict[str, int], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    deltas = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    phrases = split(text, deltas, **opts)
    assert all(p and p == p.strip() for p in phrases)
    assert " ".join(phrases) == normalize_for_speech(text)
    # The TTS stream normalizes each phrase again (tts/stream.py): no word of it may be lost then. (A
    # leading "—" may go: it is a pause at a line start; so may a phrase of punctuation alone.)
    assert [spoken(normalize_for_speech(p)) for p in phrases] == [spoken(p) for p in phrases]
    assert phrases == split(text, chars(text), **opts) == split(text, **opts)
