"""The ``-k`` expression language: pytest's grammar, parsed by hand and never evaluated as code.

Grammar::

    expr     := and_expr ('or' and_expr)*
    and_expr := not_expr ('and' not_expr)*
    not_expr := 'not' not_expr | '(' expr ')' | ident
    ident    := a run of word characters and  : + - . [ ] \\ / =

``=`` is allowed besides pytest's characters so that sweep points can be picked by
their values: ``-k "C=0.1 and kernel=rbf"``.

An identifier matches when it is a case-insensitive substring of any of the names given to
:meth:`KeywordExpression.matches`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import attrs

from expkit.errors import UsageError

__all__ = ["KeywordExpression", "compile_keyword_expression"]

# A compiled expression: given "does this identifier match?", answer for the whole expression.
_Node = Callable[[Callable[[str], bool]], bool]

_IDENT = re.compile(r"[\w:+\-.\[\]\\/=]+")
_KEYWORDS = frozenset({"and", "or", "not"})
_END = "end of input"
# Each nesting level costs a few Python frames while parsing; stop well before the recursion limit.
_MAX_DEPTH = 100


@attrs.frozen
class _Token:
    kind: str  # "(", ")", "and", "or", "not", "ident" or _END
    value: str
    column: int  # 1-based, as shown to the user


@attrs.frozen
class KeywordExpression:
    """A compiled ``-k`` expression; :meth:`matches` tests it against a set of names."""

    text: str
    _node: _Node = attrs.field(repr=False, eq=False)

    def matches(self, names: Iterable[str]) -> bool:
        """Whether the expression holds when each identifier is looked up in ``names``."""
        lowered = [name.lower() for name in names]
        return self._node(lambda ident: any(ident in name for name in lowered))


def compile_keyword_expression(text: str) -> KeywordExpression:
    """Parse ``text`` into a :class:`KeywordExpression`, or raise a one-line ``UsageError``."""
    parser = _Parser(text, _tokenize(text))
    node = parser.expr(0)
    parser.expect(_END)
    return KeywordExpression(text, node)


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char.isspace():
            pos += 1
        elif char in "()":
            tokens.append(_Token(char, char, pos + 1))
            pos += 1
        else:
            match = _IDENT.match(text, pos)
            if match is None:
                raise _error(text, pos + 1, f"unexpected character {char!r}")
            word = match.group()
            tokens.append(_Token(word if word in _KEYWORDS else "ident", word, pos + 1))
            pos = match.end()
    tokens.append(_Token(_END, "", len(text) + 1))
    return tokens


def _error(text: str, column: int, what: str) -> UsageError:
    return UsageError(f"wrong expression passed to '-k': {text}: at column {column}: {what}")


def _describe(kind: str) -> str:
    return {"(": "'('", ")": "')'", "ident": "identifier", _END: _END}.get(kind, f"'{kind}'")


class _Parser:
    """Recursive descent over the token list; each method returns a compiled node."""

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self._text = text
        self._tokens = tokens
        self._pos = 0

    def _accept(self, kind: str) -> _Token | None:
        token = self._tokens[self._pos]
        if token.kind != kind:
            return None
        if kind != _END:
            self._pos += 1
        return token

    def expect(self, *kinds: str) -> _Token:
        for kind in kinds:
            token = self._accept(kind)
            if token is not None:
                return token
        token = self._tokens[self._pos]
        wanted = " or ".join(_describe(kind) for kind in kinds)
        raise _error(self._text, token.column, f"expected {wanted}; got {_describe(token.kind)}")

    def expr(self, depth: int) -> _Node:
        nodes = [self._and_expr(depth)]
        while self._accept("or"):
            nodes.append(self._and_expr(depth))
        return nodes[0] if len(nodes) == 1 else _any(nodes)

    def _and_expr(self, depth: int) -> _Node:
        nodes = [self._not_expr(depth)]
        while self._accept("and"):
            nodes.append(self._not_expr(depth))
        return nodes[0] if len(nodes) == 1 else _all(nodes)

    def _not_expr(self, depth: int) -> _Node:
        token = self.expect("not", "(", "ident")
        if depth >= _MAX_DEPTH:
            raise _error(self._text, token.column, f"nested more than {_MAX_DEPTH} levels deep")
        if token.kind == "not":
            return _negate(self._not_expr(depth + 1))
        if token.kind == "(":
            node = self.expr(depth + 1)
            self.expect(")")
            return node
        return _ident(token.value.lower())


def _ident(word: str) -> _Node:
    return lambda lookup: lookup(word)


def _negate(node: _Node) -> _Node:
    return lambda lookup: not node(lookup)


# Chains stay flat lists so that "a or b or ... " of any length evaluates without deep recursion.
def _all(nodes: list[_Node]) -> _Node:
    return lambda lookup: all(node(lookup) for node in nodes)


def _any(nodes: list[_Node]) -> _Node:
    return lambda lookup: any(node(lookup) for node in nodes)
