"""The document model: request text parsed and bounded by the daemon, cut into worker chunks.

No engine ever sees request text as it came: plain text is normalised (NFC,
control characters removed) and markup (SSML, or Idlak's XML) is parsed here
with an allowlist of elements and attributes into text runs and breaks. A
worker gets segments (``{"text": ...}`` or ``{"break_ms": ...}``) and each
engine renders only those (see ``idlakd.worker.engines``).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any, Callable, Final
from xml.parsers import expat

from idlakd.synth.text import MAX_CHUNK_CHARS, cut_sentence, split_sentences

#: One break may last at most this long, whatever the markup asks.
MAX_BREAK_SECONDS: Final = 10.0
#: Markup nesting bound (a deep document costs the parser, never the engine).
MAX_DEPTH: Final = 32
#: Characters per second of the fastest plausible speech: the audio estimate
#: used to refuse a request (413) errs on the short side, so no honest text is refused.
FAST_CHARS_PER_SECOND: Final = 25.0
#: Characters per second of slow speech: the allowance for breaks errs on the long side.
SLOW_CHARS_PER_SECOND: Final = 10.0

SSML_NAMESPACE: Final = "http://www.w3.org/2001/10/synthesis"
XML_NAMESPACE: Final = "http://www.w3.org/XML/1998/namespace"

# Markup starts like an XML document: a tag, a declaration or a comment.
_MARKUP_START: Final = re.compile(r"<[A-Za-z_?!]")
# Removed from every text: C0 and C1 control characters except tab, newline and
# carriage return (whitespace). eSpeak reads U+0001 as "embedded command follows".
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TIME: Final = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)?\s*$")
# SSML's break strengths as pauses (seconds).
_STRENGTHS: Final = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.4,
                     "strong": 0.75, "x-strong": 1.2}
_MAX_ATTRIBUTE_CHARS: Final = 64


class DocumentError(ValueError):
    """The request text cannot be spoken as given; the message says why (and where)."""


@dataclasses.dataclass(frozen=True)
class Text:
    """Words to speak, already normalised: no control characters, no markup."""

    text: str

    def wire(self) -> dict[str, Any]:
        """The segment as the worker protocol carries it."""
        return {"text": self.text}


@dataclasses.dataclass(frozen=True)
class Break:
    """Silence of a bounded length."""

    ms: int

    def wire(self) -> dict[str, Any]:
        """The segment as the worker protocol carries it."""
        return {"break_ms": self.ms}


Segment = Text | Break


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One unit of work for a worker: a sentence (or part of one) and the breaks around it."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The words of the chunk (for logs and estimates)."""
        return " ".join(s.text for s in self.segments if isinstance(s, Text))

    def wire(self) -> list[dict[str, Any]]:
        """The segments as the worker protocol carries them."""
        return [segment.wire() for segment in self.segments]


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed request: its chunks in order, and what bounds are checked against."""

    chunks: tuple[Chunk, ...]
    characters: int
    break_seconds: float

    def min_audio_seconds(self) -> float:
        """A lower estimate of the audio this document makes (fast speech plus its breaks)."""
        return self.characters / FAST_CHARS_PER_SECOND + self.break_seconds


def is_markup(text: str) -> bool:
    """Whether the text is meant as an XML document rather than plain text."""
    return _MARKUP_START.match(text.lstrip()) is not None


def clean(text: str) -> str:
    """NFC-normalised text with control characters (other than tab, CR, LF) removed."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


def parse(text: str, max_break_share: float = 0.5,
          max_chunk_chars: int = MAX_CHUNK_CHARS) -> Document:
    """The document for a request's text: markup parsed, plain text cleaned; DocumentError if unusable."""
    runs = _parse_markup(text) if is_markup(text) else [clean(text)]
    chunks: list[Chunk] = []
    pending: list[Segment] = []  # breaks before the first words
    characters = 0
    breaks = 0.0
    for run in runs:
        if isinstance(run, Break):
            breaks += run.ms / 1000
            if chunks:
                chunks[-1] = Chunk((*chunks[-1].segments, run))
            else:
                pending.append(run)
            continue
        for sentence in split_sentences(run):
            for piece in cut_sentence(sentence, max_chunk_chars):
                characters += len(piece)
                chunks.append(Chunk((*pending, Text(piece))))
                pending = []
    if not chunks:
        raise DocumentError("Text has nothing to say.")
    _check_breaks(breaks, characters, max_break_share)
    return Document(tuple(chunks), characters, breaks)


def _check_breaks(breaks: float, characters: int, share: float) -> None:
    """Refuse breaks that take more than their share of the request's audio (one long break is fine)."""
    speech = characters / SLOW_CHARS_PER_SECOND
    # breaks <= share of (speech + breaks), plus one full break for a short text.
    allowed = MAX_BREAK_SECONDS + (share / (1 - share) * speech if share < 1 else float("inf"))
    if breaks > allowed:
        raise DocumentError(f"<break>: the breaks add up to {breaks:g} s, more than the "
                            f"{allowed:.0f} s allowed for this much text.")


# -- markup -------------------------------------------------------------------

#: Allowed elements and, for each, its allowed attributes. SSML's structure and
#: Idlak's (doc, parl, spurt) are containers; prosody, emphasis, say-as and lang
#: are read as containers too until the speech options give them meaning.
_ELEMENTS: Final[dict[str, frozenset[str]]] = {
    "speak": frozenset({"version", "xml:lang", "lang"}),
    "doc": frozenset(),
    "parl": frozenset({"no", "id"}),
    "spurt": frozenset({"no", "id"}),
    "p": frozenset({"xml:lang"}),
    "s": frozenset({"xml:lang"}),
    "break": frozenset({"time", "strength", "type"}),
    "prosody": frozenset({"rate", "pitch", "volume", "range", "contour", "duration"}),
    "emphasis": frozenset({"level"}),
    "say-as": frozenset({"interpret-as", "format", "detail"}),
    "sub": frozenset({"alias"}),
    "lang": frozenset({"xml:lang"}),
    "mark": frozenset({"name"}),
}
# Elements whose end closes a sentence.
_BLOCKS: Final = frozenset({"speak", "doc", "parl", "spurt", "p", "s"})


class _MarkupReader:
    """Expat handlers that turn allowed markup into text runs and breaks, refusing the rest."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        self.runs: list[str | Break] = []
        self._text: list[str] = []
        self._stack: list[str] = []
        self._alias_depth: int | None = None

    def _where(self) -> str:
        """The parser's position, for error messages."""
        return f"line {self._parser.CurrentLineNumber}"

    def _flush(self) -> None:
        """End the current text run (at a block end or a break)."""
        text = clean("".join(self._text))
        self._text = []
        if text.strip():
            self.runs.append(text)

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        """An element opens: check it and its attributes against the allowlist."""
        name = _local_name(tag, self._where)
        if name not in _ELEMENTS:
            raise DocumentError(f"<{name}> is not allowed in markup ({self._where()}).")
        if len(self._stack) >= MAX_DEPTH:
            raise DocumentError(f"<{name}>: markup nested deeper than {MAX_DEPTH} ({self._where()}).")
        allowed = _ELEMENTS[name]
        values: dict[str, str] = {}
        for raw, value in attributes.items():
            attribute = _attribute_name(raw)
            if attribute not in allowed:
                raise DocumentError(f"<{name}>: attribute '{attribute}' is not allowed "
                                    f"({self._where()}).")
            if len(value) > _MAX_ATTRIBUTE_CHARS:
                raise DocumentError(f"<{name}>: attribute '{attribute}' is longer than "
                                    f"{_MAX_ATTRIBUTE_CHARS} characters ({self._where()}).")
            values[attribute] = value
        self._stack.append(name)
        if name in _BLOCKS:
            self._flush()
        elif name == "break":
            self._flush()
            self.runs.append(Break(round(_break_seconds(values, self._where) * 1000)))
        elif name == "sub" and self._alias_depth is None:
            # The alias is spoken instead of the element's content.
            self._text.append(f" {values.get('alias', '')} ")
            self._alias_depth = len(self._stack)

    def end(self, tag: str) -> None:
        """An element closes."""
        name = self._stack.pop()
        if self._alias_depth is not None and len(self._stack) < self._alias_depth:
            self._alias_depth = None
        if name in _BLOCKS:
            self._flush()

    def data(self, text: str) -> None:
        """Character data: part of the current run (unless inside a <sub> with an alias)."""
        if self._alias_depth is None:
            self._text.append(text)

    @staticmethod
    def refuse_doctype(*_args: Any) -> None:
        """No DTD: no entity expansion and no external references, whatever follows."""
        raise DocumentError("Markup must not contain DOCTYPE or ENTITY declarations.")


def _local_name(tag: str, where: Callable[[], str]) -> str:
    """An element's name without the SSML namespace; other namespaces are refused."""
    namespace, _, name = tag.rpartition(" ")
    if namespace and namespace != SSML_NAMESPACE:
        raise DocumentError(f"<{name}>: namespace {namespace[:_MAX_ATTRIBUTE_CHARS]!r} is not "
                            f"allowed ({where()}).")
    return name


def _attribute_name(raw: str) -> str:
    """An attribute's name with the XML namespace written as 'xml:' (so xml:base is named)."""
    namespace, _, name = raw.rpartition(" ")
    if namespace == XML_NAMESPACE:
        return f"xml:{name}"
    if namespace:
        return f"{namespace[:_MAX_ATTRIBUTE_CHARS]}:{name}"
    return name


def _break_seconds(values: dict[str, str], where: Callable[[], str]) -> float:
    """A break's length: its time ('500ms', '2s', or seconds as Idlak writes them) or strength."""
    if "time" in values:
        match = _TIME.match(values["time"])
        if match is None:
            raise DocumentError(f"<break>: time {values['time']!r} is not a duration such as "
                                f"'500ms' or '2s' ({where()}).")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        if seconds > MAX_BREAK_SECONDS:
            raise DocumentError(f"<break>: time {values['time']!r} is longer than "
                                f"{MAX_BREAK_SECONDS:g} s ({where()}).")
        return seconds
    strength = values.get("strength", "medium")
    if strength not in _STRENGTHS:
        raise DocumentError(f"<break>: strength {strength!r} is not one of "
                            f"{', '.join(_STRENGTHS)} ({where()}).")
    return _STRENGTHS[strength]


def _parse_markup(text: str) -> list[str | Break]:
    """Parse an XML document with the allowlist into text runs and breaks."""
    parser = expat.ParserCreate("utf-8", namespace_separator=" ")
    reader = _MarkupReader(parser)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    parser.StartDoctypeDeclHandler = reader.refuse_doctype
    parser.EntityDeclHandler = reader.refuse_doctype
    # Never fetch or read anything: external entities and parameter entities are refused.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.ExternalEntityRefHandler = lambda *_args: 0
    try:
        parser.Parse(text.strip().encode("utf-8", "surrogatepass"), True)
    except expat.ExpatError as exc:
        raise DocumentError(f"Markup is not well-formed XML ({expat.ErrorString(exc.code)}, "
                            f"line {exc.lineno}).") from None
    except RecursionError:
        raise DocumentError("Markup is nested too deeply.") from None
    return reader.runs
