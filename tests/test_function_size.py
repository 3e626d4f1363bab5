"""No function in the packages' ``src/`` is longer than 80 lines (docstrings and argparse
declarations aside): each fits on a screen, as the style guide asks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return (first.end_lineno or first.lineno) - first.lineno + 1
    return 0


def _argparse_lines(node: ast.AST) -> int:
    """Lines of ``x.add_argument(...)`` statements (argparse declarations)."""
    total = 0
    for stmt in ast.walk(node):
        if (
            isinstance(stmt, ast.Expr | ast.Assign)
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Attribute)
            and stmt.value.func.attr in ("add_argument", "add_parser", "add_argument_group")
        ):
            total += (stmt.end_lineno or stmt.lineno) - stmt.lineno + 1
    return total


def function_lengths(source: str) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function, without its docstring and argparse calls."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            span = (node.end_lineno or node.lineno) - node.lineno + 1
            out.append((node.name, span - _docstring_lines(node) - _argparse_lines(node)))
    return out


def test_the_counter_counts_what_it_should() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(3))
    doc = '    """Doc.\n\n    More."""'
    source = f'def f():\n{doc}\n{body}\n    p.add_argument(\n        "--a",\n    )\n'
    assert function_lengths(source) == [("f", 1 + 3)]


def test_no_function_in_src_is_longer_than_80_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{name} ({n} lines)"
        for path in sorted(ROOT.glob("packages/*/src/**/*.py"))
        for name, n in function_lengths(path.read_text())
        if n > LIMIT
    ]
    assert not long, long
