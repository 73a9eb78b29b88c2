"""Tokens -> syntax tree, by recursive descent, within the size and nesting limits.

Nesting counts brackets and prefix operators while parsing, and the depth of the finished tree
(the root is level 1); each may reach MAX_DEPTH. The guard keeps Python's own stack shallow.

Precedence, loosest first: or; and; not; comparisons (not chained); + -; * /; unary -; .field.
"""

from __future__ import annotations

from typing import TypeVar

from registry.formulas import nodes
from registry.formulas.errors import FormulaError, quote
from registry.formulas.lexer import Token, string_value, tokenize
from registry.formulas.nodes import Binary, Call, Field, Literal, Name, Node, Unary

MAX_NODES = 200
MAX_DEPTH = 32
COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
_CONSTANTS: dict[str, bool | None] = {"true": True, "false": False, "null": None}
_N = TypeVar("_N", bound=Node)


def parse(source: str) -> Node:
    """Return the syntax tree of source; raise FormulaError on bad syntax or a broken limit."""
    parser = _Parser(tokenize(source))
    if parser.peek.kind == "end":
        raise FormulaError("empty formula", 0)
    tree = parser.expression()
    if parser.peek.kind != "end":
        got = _describe(parser.peek)
        raise FormulaError(f"expected an operator or the end, got {got}", parser.peek.pos)
    _check_depth(tree, 1)
    return tree


def _check_depth(node: Node, depth: int) -> None:
    """Raise FormulaError if the tree below node is nested deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise FormulaError(f"formula is nested more than {MAX_DEPTH} levels deep", node.pos)
    for child in nodes.children(node):
        _check_depth(child, depth + 1)


def _describe(token: Token) -> str:
    """Return how a token reads in an error message."""
    if token.kind == "end":
        return "end of formula"
    return quote(token.text)


class _Parser:
    """One pass over the tokens; counts nodes and guards its own recursion."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.nodes = 0
        self.depth = 0

    @property
    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        """Return the current token and move past it (never past the end token)."""
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def expect(self, kind: str, wanted: str) -> Token:
        """Return the next token if it is kind, else raise FormulaError saying what was wanted."""
        token = self.peek
        if token.kind != kind:
            raise FormulaError(f"expected {wanted}, got {_describe(token)}", token.pos)
        return self.advance()

    def made(self, node: _N) -> _N:
        """Return node after counting it against MAX_NODES."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise FormulaError(f"formula has more than {MAX_NODES} parts", node.pos)
        return node

    def nested(self, pos: int) -> None:
        """Enter one level of nesting; raise FormulaError past MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"formula is nested more than {MAX_DEPTH} levels deep", pos)

    def expression(self) -> Node:
        """expression := and ('or' and)*"""
        node = self.conjunction()
        while self.peek.kind == "or":
            op = self.advance()
            node = self.made(Binary(op.pos, "or", node, self.conjunction()))
        return node

    def conjunction(self) -> Node:
        """and := not ('and' not)*"""
        node = self.negation()
        while self.peek.kind == "and":
            op = self.advance()
            node = self.made(Binary(op.pos, "and", node, self.negation()))
        return node

    def negation(self) -> Node:
        """not := 'not' not | comparison"""
        if self.peek.kind != "not":
            return self.comparison()
        op = self.advance()
        self.nested(op.pos)
        node = self.made(Unary(op.pos, "not", self.negation()))
        self.depth -= 1
        return node

    def comparison(self) -> Node:
        """comparison := sum (CMP sum)?"""
        node = self.sum()
        if self.peek.kind not in COMPARISONS:
            return node
        op = self.advance()
        node = self.made(Binary(op.pos, op.kind, node, self.sum()))
        if self.peek.kind in COMPARISONS:
            raise FormulaError("comparisons cannot be chained; join them with 'and'", self.peek.pos)
        return node

    def sum(self) -> Node:
        """sum := product (('+' | '-') product)*"""
        node = self.product()
        while self.peek.kind in ("+", "-"):
            op = self.advance()
            node = self.made(Binary(op.pos, op.kind, node, self.product()))
        return node

    def product(self) -> Node:
        """product := unary (('*' | '/') unary)*"""
        node = self.unary()
        while self.peek.kind in ("*", "/"):
            op = self.advance()
            node = self.made(Binary(op.pos, op.kind, node, self.unary()))
        return node

    def unary(self) -> Node:
        """unary := '-' unary | postfix"""
        if self.peek.kind != "-":
            return self.postfix()
        op = self.advance()
        self.nested(op.pos)
        node = self.made(Unary(op.pos, "-", self.unary()))
        self.depth -= 1
        return node

    def postfix(self) -> Node:
        """postfix := primary ('.' NAME)*"""
        node = self.primary()
        while self.peek.kind == ".":
            self.advance()
            name = self.expect("name", "a field name after '.'")
            node = self.made(Field(name.pos, node, name.text))
        return node

    def primary(self) -> Node:
        """primary := NUMBER | STRING | true | false | null | NAME | call | '(' expression ')'"""
        token = self.advance()
        if token.kind == "number":
            return self.made(Literal(token.pos, token.number))
        if token.kind == "string":
            return self.made(Literal(token.pos, string_value(token)))
        if token.kind in _CONSTANTS:
            return self.made(Literal(token.pos, _CONSTANTS[token.kind]))
        if token.kind == "name":
            return (
                self.call(token)
                if self.peek.kind == "("
                else self.made(Name(token.pos, token.text))
            )
        if token.kind == "(":
            self.nested(token.pos)
            node = self.expression()
            self.expect(")", "')' to close '('")
            self.depth -= 1
            return node
        raise FormulaError(f"expected a value, got {_describe(token)}", token.pos)

    def call(self, name: Token) -> Node:
        """call := NAME '(' [expression (',' expression)*] ['where' expression] ')'"""
        self.advance()
        self.nested(name.pos)
        args: list[Node] = []
        if self.peek.kind not in (")", "where"):
            args.append(self.expression())
            while self.peek.kind == ",":
                self.advance()
                args.append(self.expression())
        where, where_pos = None, -1
        if self.peek.kind == "where":
            where_pos = self.advance().pos
            where = self.expression()
        self.expect(")", f"')' to close the call to {name.text}")
        self.depth -= 1
        return self.made(Call(name.pos, name.text, tuple(args), where, where_pos))
