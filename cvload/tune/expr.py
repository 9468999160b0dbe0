"""Arithmetic over knob values for costs and constraints (``"token2wav_instances * 1.5 + 2 <= gpu_memory_gib"``).

Parsed with Python's ``ast`` and evaluated by a small walker that knows numbers, names, ``+ - * / // % **``,
comparisons (chained too), ``and``/``or``/``not``, ``min``/``max``: a space file is data, never code to run.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cvload.errors import UsageError

_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMP: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq,
    ast.NotEq: operator.ne}
_FUNCS: dict[str, Callable[..., Any]] = {"min": min, "max": max}


@dataclass(frozen=True)
class Expr:
    """One parsed expression and the names it reads."""

    text: str
    tree: ast.expression
    names: frozenset[str]

    def __call__(self, values: Mapping[str, Any]) -> Any:
        return _eval(self.tree.body, values, self.text)


def parse_expr(text: str, where: str, known: Iterable[str]) -> Expr:
    """Parse ``text`` (named ``where`` in messages); every name must be one of ``known`` (did-you-mean)."""
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as exc:
        raise UsageError(f"{where}: {text!r} is not an expression ({exc.msg})",
                         hint="e.g. \"token2wav_instances * 1.5 + bls_instances * 0.2 <= 8\"") from None
    names: set[str] = set()
    known = set(known)
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                raise UsageError(f"{where}: {text!r}: only min(...) and max(...) may be called")
        elif isinstance(node, ast.Name):
            if node.id in _FUNCS:
                continue
            if node.id not in known:
                close = difflib.get_close_matches(node.id, sorted(known), n=1)
                raise UsageError(f"{where}: {text!r} names {node.id!r}, which is no knob or cost"
                                 + (f" (did you mean {close[0]!r}?)" if close else ""),
                                 hint="knobs and costs here: " + ", ".join(sorted(known)))
            names.add(node.id)
        elif not isinstance(node, ast.Constant | ast.BinOp | ast.UnaryOp | ast.Compare | ast.BoolOp | ast.Load
                            | ast.operator | ast.unaryop | ast.cmpop | ast.boolop):
            raise UsageError(f"{where}: {text!r}: {type(node).__name__} is not allowed",
                             hint="use numbers, knob and cost names, + - * / // % **, comparisons, and/or/not, "
                                  "min(), max()")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool):
            raise UsageError(f"{where}: {text!r}: only numbers may appear, not {node.value!r}")
    return Expr(str(text).strip(), tree, frozenset(names))


def _eval(node: ast.AST, values: Mapping[str, Any], text: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        try:
            return _BIN[type(node.op)](_eval(node.left, values, text), _eval(node.right, values, text))
        except (ZeroDivisionError, OverflowError) as exc:
            raise UsageError(f"{text!r}: {exc} for {dict(values)}") from None
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, values, text)
        return {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}[type(node.op)](value)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values, text)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, values, text)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        parts = (_eval(v, values, text) for v in node.values)
        return all(parts) if isinstance(node.op, ast.And) else any(parts)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return _FUNCS[node.func.id](*(_eval(a, values, text) for a in node.args))
    raise UsageError(f"{text!r}: cannot evaluate {type(node).__name__}")  # pragma: no cover - parse_expr refused it
