"""Text for speaking: LLM output → plain speakable English, and partial output → phrases.

A voice reads whatever it is given, so markup, emoji, URLs and symbols go before synthesis; and
phrases are cut while the LLM streams, so the first audio starts after a few words, not a reply.

Normalization works token by token (a token is a run of non-whitespace); the only state carried
between tokens is small: line starts (list markers), a numbered marker held until a word follows it,
an open SSML/HTML tag, the last word (held until we know whether its line ends) and the word before
it ("order" makes "4712" an id, read digit by digit: `tts/numbers.py`). `normalize_for_speech` and
`PhraseSplitter` drive the same word stream, so a streamed reply's phrases always join to the
normalization of the whole reply, however the deltas split it, and the splitter's cuts can never
fall inside a number or a word (an id's digits are one word). A phrase is one line of text and
never starts with a list marker, so normalizing a phrase again (the TTS stream does) keeps its words.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from tts.numbers import RANGE, range_to, read_number

MAX_TOKEN_CHARS = 100
"""Longer runs without whitespace are spoken in pieces (URLs: "a link"), which bounds memory."""

_WS = re.compile(r"\s+")
_NEWLINES = frozenset("\n\r\x0b\x0c\u2028\u2029")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufffd]")
_PICTO = re.compile(
    "[\U0001f000-\U0001faff\U0001fc00-\U0001ffff\u2190-\u21ff\u2300-\u23ff\u2460-\u24ff"
    "\u25a0-\u27bf\u2900-\u297f\u2b00-\u2bff\u3030\u303d\u3297\u3299\ufe00-\ufe0f\u20e3"
    "\u00a9\u00ae\u2122\u2022\u2023\U000e0000-\U000e007f]"
)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_URL = re.compile(r"<?(?:(?:https?|ftp)://|www\.)[^\s<>()\[\]{}\"'`|]+>?", re.IGNORECASE)
_URL_START = re.compile(r"(?:https?|ftp)://|www\.", re.IGNORECASE)
_LINK_TARGET = re.compile(r"\]\((?:[^\s()]|\([^\s()]*\))*\)")
_TAG = re.compile(r"</?[A-Za-z][^<>\s]*>")
# A tag whose attributes follow in later tokens ("<break" + ' time="1s"/>'), or an HTML comment;
# only tag names we know, so that "x <y" in prose does not swallow the words after it.
_OPEN_TAG = re.compile(
    r"</?(?:speak|break|prosody|emphasis|say-as|phoneme|sub|voice|audio|mark|lang|p|s|w|a|img|span"
    r"|div|font|br|hr|code|pre)$|<!--(?:(?!-->).)*$",
    re.IGNORECASE,
)
_OPEN_TAG_MAX_TOKENS = 8  # an unclosed tag gives up after this many tokens
_BULLET = re.compile(r"[-*+•>#—–_=]+")  # list bullets, headings, rules at a line start
# "2." or "12)" at a line start is a list's number only when a word follows it, and only on a line
# after a line break, or "1." opening the text: a phrase cut mid-line ("144.", "5) then") is always
# a single line, so its first number is never taken for a marker when a phrase is normalized again.
_NUMBERED = re.compile(r"\d{1,2}[.)]")
_TIME = re.compile(r"(?<![\d:.,])(\d{1,2}):(\d\d)(?![\d:])")
_MONEY = re.compile(r"([$€£¥₹])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(k|K|m|M|mn|bn|b|B)?(?![^\W_])")
_MONEY_AFTER = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?([$€£¥₹])")
_CURRENCY = {  # symbol: (one, many, one hundredth, hundredths)
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""),
    "₹": ("rupee", "rupees", "paisa", "paise"),
}
_SCALE = {"k": "thousand", "m": "million", "mn": "million", "b": "billion", "bn": "billion"}
_SIMPLE = [  # (pattern, replacement), applied in order after markup is gone
    (re.compile(r"°\s*C(?![A-Za-z])"), " degrees Celsius"),
    (re.compile(r"°\s*F(?![A-Za-z])"), " degrees Fahrenheit"),
    (re.compile(r"°"), " degrees"),
    (re.compile(r"%"), " percent"),
    (re.compile(r"(?<![A-Z])&|&(?![A-Z])"), " and "),  # "AT&T", "R&D" read fine as they are
    (re.compile(r"\+"), " plus "),
    (re.compile(r"=+"), " equals "),
    (re.compile(r"×"), " times "),
    (re.compile(r"#(?=\d)"), "number "),
    (re.compile(r"(?<=[A-Za-z])#"), " sharp"),
    (re.compile(r"@"), " at "),
    (re.compile(r"~(?=\d)"), "about "),
    (re.compile(r"(?<=\d)–(?=\d)"), " to "),  # en dash in a range: "2020–2021"
    (re.compile(r"-{2,}|[—–]"), " — "),
    (re.compile(r"(?<=[^\W_])(?:\.{3,}|…)"), ", "),  # the phonemizer makes no pause for an ellipsis
    (re.compile(r"\.{3,}|…"), " "),
    (re.compile(r"[$€£¥₹#~<>|\\^{}]"), " "),
]
_ENDS = ".,;:!?—…"  # a word ending in one of these needs no "." when its line ends
_CLOSERS = "\"')]}»”’"
_OPENERS = "\"'([{«“‘"
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. sr. jr. st. mt. vs. etc. approx. no. fig. inc. ltd. co. corp. dept. "
    "est. gen. gov. sgt. capt. lt. col. rev. hon. ave. blvd. rd. jan. feb. mar. apr. jun. jul. "
    "aug. sep. sept. oct. nov. dec.".split()
)
_INITIALS = re.compile(r"(?:[A-Za-z]\.){2,}|[B-HJ-Z]\.")  # "e.g.", "U.S.", "a.m.", "J."


def _money(m: re.Match[str]) -> str:
    sym, whole, frac, scale = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    if len(whole) >= 5 and "," not in whole:  # "$12345": an amount, not an id to read digit by digit
        whole = f"{int(whole):,}"
    one, many, cent, cents = _CURRENCY[sym]
    if scale:
        return f"{whole}{frac} {_SCALE[scale.lower()]} {many}"
    if len(frac) == 3 and cent:  # ".50": speak the hundredths
        units, hundredths = int(whole.replace(",", "")), int(frac[1:])
        parts = [f"{whole} {one if units == 1 else many}"] if units or not hundredths else []
        if hundredths:
            parts.append(f"{hundredths} {cent if hundredths == 1 else cents}")
        return " and ".join(parts)
    return f"{whole}{frac} {one if whole == '1' and not frac else many}"


def _money_after(m: re.Match[str]) -> str:
    return _MONEY.sub(_money, m.group(3) + m.group(1) + (m.group(2) or ""))


def _time(m: re.Match[str]) -> str:
    hours, minutes = m.group(1).lstrip("0") or "0", m.group(2)  # "09:30" is "9 30", not "oh 9 30"
    glued = m.string[m.end() : m.end() + 1].isalpha()  # "10:30am"
    if minutes == "00":
        spoken = hours if glued else f"{hours} o'clock"
    else:
        spoken = f"{hours} oh {minutes[1]}" if minutes[0] == "0" else f"{hours} {minutes}"
    return spoken + (" " if glued else "")


def _url(m: re.Match[str]) -> str:
    url = m.group().lstrip("<").rstrip(">")
    core = url.rstrip(".,;:!?*_")  # sentence punctuation after a URL still belongs to the sentence
    return "a link" + url[len(core) :]


def _clean_once(t: str) -> str:
    t = _ENTITY.sub(lambda m: html.unescape(m.group()), t)
    t = _CONTROL.sub("", t)
    t = re.sub(r"<!--.*?(?:-->|$)", " ", t).replace("-->", " ").replace("->", " to ").replace("→", " to ")
    t = _PICTO.sub("", t)
    t = _LINK_TARGET.sub("", t)  # [text](url) → text
    t = re.sub(r"!?\[|\]", "", t)
    t = _URL.sub(_url, t)
    t = _TAG.sub(" ", t)
    t = re.sub(r"`{3,}[\w+#.-]*|[`*]|~~", "", t)  # code fences (with their language), emphasis
    t = re.sub(r"(?<=[^\W_])_+(?=[^\W_])", " ", t)  # snake_case → two words
    t = t.replace("_", "")
    t = RANGE.sub(range_to, t)  # "2-3 minutes", "$5-10"; not "555-1234" or "2024-05-01" (tts/numbers.py)
    t = _MONEY_AFTER.sub(_money_after, t)
    t = _MONEY.sub(_money, t)
    t = _TIME.sub(_time, t)
    for pattern, replacement in _SIMPLE:
        t = pattern.sub(replacement, t)
    return t


def _clean(token: str) -> list[str]:
    """One token's speakable words; repeated to a fixed point so normalizing twice changes nothing."""
    words = [token]
    for _ in range(32):
        new: list[str] = []
        for word in (w for part in words for w in _WS.split(_clean_once(part)) if w):
            if new and re.fullmatch(r"[.,;:!?]+", word) and len(new[-1] + word) <= MAX_TOKEN_CHARS:
                # "<b>hi</b>!" → "hi!", not "hi !"
                new[-1] += word
            else:  # an expansion ("°" → "degrees") must not make a word too long to normalize twice
                word = "—" if re.fullmatch(r"-+", word) else word
                new += [word[i : i + MAX_TOKEN_CHARS] for i in range(0, len(word), MAX_TOKEN_CHARS)]
        if new == words:
            break
        words = new
    return words


class _WordStream:
    """Raw text fed in pieces of any size → final words, with None marking each line break.

    A word is final once the whitespace after its token has arrived ("3." might become "3.5"), and,
    if it lacks end punctuation, once the next word or line break shows whether a "." belongs to it.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._tail = ""  # the token still being received
        self._skip = False  # inside an overlong URL: drop the rest of the token
        self._line_start = True
        self._broken = False  # a line break has been seen: any "N." may start a line of a list
        self._numbered: str | None = None  # "2." at a line start: a marker if a word follows, else a number
        self._tag_tokens = 0  # > 0 while inside a tag whose attributes span tokens
        self._pending: str | None = None
        self._last = ""  # the word before, in its final form: "order" makes "4712" an id

    @property
    def buffered_chars(self) -> int:
        return len(self._tail) + len(self._pending or "") + len(self._numbered or "")

    def feed(self, text: str) -> list[str | None]:
        out: list[str | None] = []
        for run in re.finditer(r"\s+|\S+", _CONTROL.sub("", text)):
            chunk = run.group()
            if not chunk[0].isspace():
                self._grow(chunk, out)
                continue
            if self._tail:
                self._token(self._tail, out)
            self._tail, self._skip = "", False
            for _ in range(sum(c in _NEWLINES for c in chunk)):
                self._newline(out)
        return out

    def finish(self) -> list[str]:
        out: list[str | None] = []
        if self._tail:
            self._token(self._tail, out)
        if self._numbered is not None:  # no word followed it: "144." is a number
            self._emit(self._numbered, out)
        if self._pending is not None:
            out.append(self._pending)
        self._reset()  # ready for the next text
        return [w for w in out if w is not None]

    def _grow(self, chars: str, out: list[str | None]) -> None:
        if self._skip:
            return
        self._tail += chars
        while len(self._tail) > MAX_TOKEN_CHARS:
            head = self._tail[:MAX_TOKEN_CHARS]
            url = _URL_START.search(head)
            if url:
                self._token(head[: url.start()].rstrip("[(<\"'"), out)
                self._token("a link", out)
                self._tail, self._skip = "", True
                return
            self._token(head, out)
            self._tail = self._tail[MAX_TOKEN_CHARS:]

    def _token(self, raw: str, out: list[str | None]) -> None:
        if self._tag_tokens:
            end = raw.find(">")
            if end < 0:
                self._tag_tokens -= 1
                return
            self._tag_tokens, raw = 0, raw[end + 1 :]
        if tag := _OPEN_TAG.search(raw):
            self._tag_tokens, raw = _OPEN_TAG_MAX_TOKENS, raw[: tag.start()]
        if self._line_start and _BULLET.fullmatch(raw):
            return
        for word in _clean(raw):
            if self._line_start and _BULLET.fullmatch(word):
                continue
            if self._line_start and _NUMBERED.fullmatch(word) and (self._broken or word == "1."):
                # Still at the line start: markers in a row are one ("1. 1. 0" → "0"); were the second
                # "1." a number, it would open the output and be taken for a marker the next time.
                self._numbered = word
                continue
            self._line_start, self._numbered = False, None  # a word follows: the held "2." was a marker
            self._emit(word, out)

    def _emit(self, word: str, out: list[str | None]) -> None:
        word = read_number(word, self._last)
        if self._pending is not None:
            out.append(self._pending)
        self._pending, self._last = None, word
        if word[-1] in _ENDS:
            out.append(word)
        else:
            self._pending = word

    def _newline(self, out: list[str | None]) -> None:
        word = self._pending
        if word is not None:
            # A heading or list item that ends without punctuation still ends a sentence.
            stopped = word + "."
            if any(c.isalpha() for c in word) and _clean(stopped) == [stopped]:
                word = self._last = stopped
            out.append(word)
        self._pending, self._line_start, self._broken = None, True, True
        out.append(None)


def normalize_for_speech(text: str) -> str:
    """Plain, speakable English from LLM output: no markup, emoji, URLs or control characters;
    currency, symbols, clock times, ranges, dates, ids and phone numbers spelled so the phonemizer
    reads them right; one space between words; sentence punctuation kept because it drives prosody.
    Idempotent."""
    stream = _WordStream()
    words = [w for w in stream.feed(text) if w is not None]
    return " ".join(words + stream.finish())


def _ends_sentence(word: str) -> bool:
    core = word.rstrip(_CLOSERS)
    if not core or core[-1] not in ".!?":
        return False
    if core[-1] == ".":
        bare = core.lstrip(_OPENERS)
        if bare.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(bare):
            return False
    return True


def _ends_clause(word: str) -> bool:
    core = word.rstrip(_CLOSERS)
    return bool(core) and core[-1] in ",;:—"


class PhraseSplitter:
    """Cuts a streaming LLM reply into normalized phrases for the TTS.

    The first phrase of a reply ends early to cut time to first audio: at a sentence end, at a
    clause boundary (, ; : —) once it has `first_min_words` words (default 3), or after
    `first_max_words` words (default 7). Later phrases end at sentence ends or line breaks, at a
    clause boundary only once they have `min_words` words (default 6, so prosody is not chopped),
    and never exceed `max_chars` characters (default 300): a reply without punctuation still
    streams in bounded memory. Cuts fall only between tokens, so "3.5", "10:30", "1,000", "Dr." or
    "e.g." are never split; a token is complete only once the whitespace after it arrives.
    """

    def __init__(
        self, first_min_words: int = 3, first_max_words: int = 7, min_words: int = 6, max_chars: int = 300
    ) -> None:
        if not 1 <= first_min_words <= first_max_words:
            raise ValueError(f"need 1 <= first_min_words <= first_max_words, got {first_min_words}, {first_max_words}")
        if min_words < 1 or max_chars < 1:
            raise ValueError(f"min_words and max_chars must be positive, got {min_words}, {max_chars}")
        self.first_min_words, self.first_max_words = first_min_words, first_max_words
        self.min_words, self.max_chars = min_words, max_chars
        self._stream = _WordStream()
        self._words: list[str] = []
        self._chars = 0
        self._first = True

    @property
    def buffered_chars(self) -> int:
        """Characters held and not yet returned (bounded by about max_chars + 2 * MAX_TOKEN_CHARS)."""
        return self._chars + self._stream.buffered_chars

    def push(self, delta: str) -> list[str]:
        """Feed the next piece of the reply; return the phrases it completed."""
        return self._take(self._stream.feed(delta))

    def flush(self) -> list[str]:
        """End of the reply: return what remains; the splitter is then ready for the next reply."""
        phrases = self._take(self._stream.finish())
        self._cut(phrases)
        self._first = True
        return phrases

    def _take(self, items: Sequence[str | None]) -> list[str]:
        phrases: list[str] = []
        for word in items:
            if word is None:  # a line break ends a phrase
                self._cut(phrases)
                continue
            if self._words and self._chars + 1 + len(word) > self.max_chars:
                self._cut(phrases)
            self._chars += len(word) + (1 if self._words else 0)
            self._words.append(word)
            n = len(self._words)
            min_words = self.first_min_words if self._first else self.min_words
            if (
                _ends_sentence(word)
                or (_ends_clause(word) and n >= min_words)
                or (self._first and n >= self.first_max_words)
            ):
                self._cut(phrases, speakable_only=True)
        return phrases

    def _cut(self, phrases: list[str], speakable_only: bool = False) -> None:
        text = " ".join(self._words)
        # A phrase of punctuation alone ("—", ".") waits for words rather than go to the voice alone.
        if not text or (speakable_only and not any(c.isalnum() for c in text)):
            return
        phrases.append(text)
        self._words, self._chars, self._first = [], 0, False
