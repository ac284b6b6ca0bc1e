"""A safe evaluator for Run.Evaluate: arithmetic, comparisons, boolean logic, a few functions.

The expression is parsed with `ast` and walked node by node; only the node kinds listed
here are accepted, so there is no attribute access, no subscripting of objects, no
comprehension, no import and no call of anything but the whitelisted functions. Python's
`eval` is never used (ELCM's Run.Evaluate used it).

Every operation is bounded before it runs: integers to MAX_INT_BITS bits, text and lists
to MAX_LENGTH items, expressions to MAX_EXPRESSION characters. Python computes `**` and
`*` on big integers, and repeats text, inside one C call that neither a timeout nor
SIGTERM interrupts, so `((10**10000)**10000)**10000` or `'a' * 10**10 * 10**10` must be
refused before the call, not stopped during it.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from typing import Any

from distx.errors import TaskFailed

MAX_INT_BITS = 4096          # about 1,233 decimal digits
MAX_LENGTH = 1_000_000       # characters of text, items of a list
MAX_EXPRESSION = 10_000      # characters of an expression
MAX_ROUND_DIGITS = 1_300     # round(x, n): |n| at most the digits of a MAX_INT_BITS integer

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}


def _round(number: Any, ndigits: Any = None) -> Any:
    """round(), with ndigits bounded: round(5, -10**7) computes 10**(10**7) first."""
    if ndigits is not None and isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise TaskFailed(f"round() to {ndigits} digits: at most {MAX_ROUND_DIGITS} either way")
    return round(number, ndigits)


FUNCTIONS = {
    "abs": abs, "min": min, "max": max, "round": _round, "int": int, "float": float,
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "floor": math.floor, "ceil": math.ceil,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "true": True, "false": False}


class UnknownName(TaskFailed):
    """The expression names a value that is not (yet) known."""



def evaluate(expression: str, names: Mapping[str, Any] | None = None) -> Any:
    """Evaluate `expression`; bare names are looked up in `names`, then in CONSTANTS."""
    shown = expression if len(expression) <= 80 else expression[:80] + "..."
    if len(expression) > MAX_EXPRESSION:
        raise TaskFailed(f"expression {shown!r} is longer than {MAX_EXPRESSION:,} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise TaskFailed(f"cannot parse expression {shown!r}: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise TaskFailed(f"expression {shown!r} nests too deeply") from None
    try:
        return _Evaluator(dict(names or {})).visit(tree.body)
    except RecursionError:
        raise TaskFailed(f"expression {shown!r} nests too deeply") from None
    except (ArithmeticError, ValueError, TypeError) as error:
        raise TaskFailed(f"cannot evaluate {shown!r}: {error}") from None


class _Evaluator:
    def __init__(self, names: dict[str, Any]) -> None:
        self.names = names

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise TaskFailed(f"'{ast.unparse(node)}' is not allowed in an expression "
                             "(only numbers, strings, names, arithmetic, comparisons, "
                             "and/or/not, if-else and the functions "
                             f"{', '.join(sorted(FUNCTIONS))})")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, (int, float, str, bool)) or node.value is None:
            raise TaskFailed(f"constant {node.value!r} is not allowed in an expression")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self.names[node.id]
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise UnknownName(f"unknown name '{node.id}' in expression")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        operation = _BINARY.get(type(node.op))
        if operation is None:
            raise TaskFailed(f"operator in '{ast.unparse(node)}' is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        _check_operands(node, operation, left, right)
        return _checked(node, operation(left, right))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operation = _UNARY.get(type(node.op))
        if operation is None:
            raise TaskFailed(f"operator in '{ast.unparse(node)}' is not allowed")
        return _checked(node, operation(self.visit(node.operand)))

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        result = None
        for value_node in node.values:
            result = self.visit(value_node)
            if isinstance(node.op, ast.And) and not result:
                return result
            if isinstance(node.op, ast.Or) and result:
                return result
        return result

    def visit_Compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            operation = _COMPARE.get(type(op))
            if operation is None:
                raise TaskFailed(f"comparison in '{ast.unparse(node)}' is not allowed")
            right = self.visit(right_node)
            if not operation(left, right):
                return False
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise TaskFailed(f"call '{ast.unparse(node)}' is not allowed "
                             f"(functions: {', '.join(sorted(FUNCTIONS))})")
        return _checked(node, FUNCTIONS[node.func.id](*(self.visit(arg) for arg in node.args)))


def _check_operands(node: ast.BinOp, operation: Any, left: Any, right: Any) -> None:
    """Refuse `**` and `*` whose result would exceed the bounds, before computing it."""
    if operation is operator.pow and _is_int(left) and _is_int(right) and right > 0 \
            and abs(left) > 1 and (abs(left).bit_length() - 1) * right >= MAX_INT_BITS:
        raise TaskFailed(f"'{_text(node)}' would be an integer of more than {MAX_INT_BITS:,} "
                         "bits")
    if operation is operator.mul:
        if _is_int(left) and _is_int(right) \
                and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise TaskFailed(f"'{_text(node)}' would be an integer of more than "
                             f"{MAX_INT_BITS:,} bits")
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and _is_int(count) \
                    and len(sequence) * count > MAX_LENGTH:
                raise TaskFailed(f"'{_text(node)}' would hold more than {MAX_LENGTH:,} "
                                 "characters or items")


def _checked(node: ast.AST, value: Any) -> Any:
    """The value of an operation, if it is within the bounds and a real number or text."""
    if _is_int(value) and value.bit_length() > MAX_INT_BITS:
        raise TaskFailed(f"'{_text(node)}' is an integer of more than {MAX_INT_BITS:,} bits")
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_LENGTH:
        raise TaskFailed(f"'{_text(node)}' holds more than {MAX_LENGTH:,} characters or items")
    if isinstance(value, complex):
        raise TaskFailed(f"'{_text(node)}' is a complex number")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # bool too: True * 'a' is 'a'


def _text(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 80 else text[:80] + "..."
