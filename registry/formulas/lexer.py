"""Source text -> tokens: numbers, strings, names, keywords and operators, each with its offset."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from registry.formulas.errors import FormulaError, quote

MAX_SOURCE = 2000
KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null", "where"})
OPERATORS = ("<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",", ".")
_HINTS = {"=": "use '==' to compare", "!": "use 'not'", "&": "use 'and'", "|": "use 'or'"}

_SPACE = re.compile(r"[ \t\r\n]+")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNESCAPE = re.compile(r"\\([\"\\])")


@dataclass(frozen=True, slots=True)
class Token:
    """kind is 'number', 'string', 'name', 'end', or the keyword or operator itself."""

    kind: str
    text: str
    pos: int
    number: float = 0.0


def tokenize(source: str) -> list[Token]:
    """Return the tokens of source, ending with an 'end' token; raise FormulaError on bad text."""
    if len(source) > MAX_SOURCE:
        raise FormulaError(f"formula is longer than {MAX_SOURCE} characters", MAX_SOURCE)
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        space = _SPACE.match(source, pos)
        if space:
            pos = space.end()
            continue
        token = _next_token(source, pos)
        tokens.append(token)
        pos += len(token.text)
    tokens.append(Token("end", "", len(source)))
    return tokens


def _next_token(source: str, pos: int) -> Token:
    """Return the token that starts at pos."""
    char = source[pos]
    if char.isascii() and char.isdigit():
        return _number(source, pos)
    if char == '"':
        return _string(source, pos)
    name = _NAME.match(source, pos)
    if name:
        word = name.group()
        return Token(word if word in KEYWORDS else "name", word, pos)
    for op in OPERATORS:
        if source.startswith(op, pos):
            return Token(op, op, pos)
    hint = _HINTS.get(char)
    suffix = f" ({hint})" if hint else ""
    raise FormulaError(f"unexpected character {quote(char)}{suffix}", pos)


def _number(source: str, pos: int) -> Token:
    """Return the number token at pos; it must be finite and not run into a name."""
    match = _NUMBER.match(source, pos)
    assert match is not None  # the caller saw a digit
    end = match.end()
    if end < len(source) and (source[end].isalnum() or source[end] in "_."):
        raise FormulaError(f"malformed number {quote(source[pos : end + 1])}", pos)
    value = float(match.group())
    if not math.isfinite(value):
        raise FormulaError(f"number {quote(match.group())} is too large", pos)
    return Token("number", match.group(), pos, value)


def _string(source: str, pos: int) -> Token:
    """Return the string token at pos; only a double quote and a backslash may be escaped."""
    end = pos + 1
    while end < len(source) and source[end] != '"':
        if source[end] == "\\":
            escaped = source[end + 1 : end + 2]
            if escaped and escaped not in ('"', "\\"):
                raise FormulaError('unsupported escape in string (only \\" and \\\\)', end)
            end += 1
        end += 1
    if end >= len(source):
        raise FormulaError("unterminated string", pos)
    return Token("string", source[pos : end + 1], pos)


def string_value(token: Token) -> str:
    """Return the text a string token stands for, without quotes and escapes."""
    return _UNESCAPE.sub(r"\1", token.text[1:-1])
