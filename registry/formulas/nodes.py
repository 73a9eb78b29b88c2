"""The syntax tree a formula parses into; pos is the offset of the token each node is named by."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, string, true/false or null (value None)."""

    pos: int
    value: float | str | bool | None


@dataclass(frozen=True, slots=True)
class Name:
    pos: int
    name: str


@dataclass(frozen=True, slots=True)
class Field:
    """target.name; pos is the offset of name."""

    pos: int
    target: Node
    name: str


@dataclass(frozen=True, slots=True)
class Unary:
    """'-' or 'not' applied to operand; pos is the operator's offset."""

    pos: int
    op: str
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    """left op right; pos is the operator's offset."""

    pos: int
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Call:
    """name(args [where condition]); where_pos is the offset of 'where', or -1."""

    pos: int
    name: str
    args: tuple[Node, ...]
    where: Node | None = None
    where_pos: int = -1


Node = Literal | Name | Field | Unary | Binary | Call


def start_of(node: Node) -> int:
    """Return the offset of the first token of node."""
    if isinstance(node, Binary):
        return start_of(node.left)
    if isinstance(node, Field):
        return start_of(node.target)
    return node.pos


def children(node: Node) -> tuple[Node, ...]:
    """Return the direct sub-nodes of node."""
    if isinstance(node, Field):
        return (node.target,)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args if node.where is None else (*node.args, node.where)
    return ()
