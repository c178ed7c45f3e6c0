"""No route decides on its own: every access decision is indexer/services/access.py's.

A route *decides* when its code, anywhere in indexer/api/routes/*.py:
- reads a principal's role set (any `.roles`), or names a role set or the platform
  administrators' role (`STAFF_ROLES`, `WRITER_ROLES`, `PLATFORM_ADMIN`);
- asks a principal about a role or a permission itself (a call of `.has`, `.may_read`,
  `.may_write` or `.may_search_persons` on anything but access.py);
- compares (==, !=, <, in, is, ...), or tests for truth (an `if`, `while`, `assert` or
  conditional expression's test, an operand of `and`, `or`, `not`), an expression holding
  an institution (any `.institution`), an owner (any name or attribute whose name holds
  `owner`) or the loaders of a study's owner (a call of `study_institution` or
  `arrival_owner`).
An attribute of a capitalised name (`Grant.owner_institution == code`) is a SQL column:
it builds a query's filter and decides nothing, so it is left alone; so are the arguments
of a call of access.py (`access.may_see_alert(who, row.owner_institution)`).
Routes pass institutions and owners on as values (to access.py, to a query, to a row).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTES = Path(__file__).resolve().parents[2] / "indexer" / "api" / "routes"
ROLE_NAMES = frozenset({"STAFF_ROLES", "WRITER_ROLES", "PLATFORM_ADMIN"})
ROLE_CALLS = frozenset({"has", "may_read", "may_write", "may_search_persons"})
OWNER_LOADERS = frozenset({"study_institution", "arrival_owner"})


def _is_column(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id[:1].isupper()


def _asks_access(node: ast.AST) -> bool:
    """A call of access.py (`access.may_...(...)`): what it is given is passed on."""
    func = node.func if isinstance(node, ast.Call) else None
    return isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "access"


def _walk(node: ast.AST) -> list[ast.AST]:
    """ast.walk, but not into the arguments of calls of access.py."""
    found = [node]
    if not _asks_access(node):
        for child in ast.iter_child_nodes(node):
            found += _walk(child)
    return found


def _holds_owner_or_institution(node: ast.AST) -> bool:
    for sub in _walk(node):
        if isinstance(sub, ast.Attribute) and not _is_column(sub):
            if sub.attr == "institution" or "owner" in sub.attr:
                return True
        if isinstance(sub, ast.Name) and "owner" in sub.id:
            return True
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in OWNER_LOADERS:
                return True
    return False


def _tests(tree: ast.AST) -> list[ast.AST]:
    """Every expression used as a comparison or a truth test."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            found.append(node)
        elif isinstance(node, (ast.If, ast.While, ast.Assert, ast.IfExp)):
            found.append(node.test)
        elif isinstance(node, ast.BoolOp):
            found.extend(node.values)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append(node.operand)
        elif isinstance(node, ast.comprehension):
            found.extend(node.ifs)
    return found


def decisions(source: str, filename: str = "<route>") -> list[str]:
    """Where this module decides on access itself: "file:line what", one per finding."""
    tree = ast.parse(source, filename)
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "roles":
            found.add((node.lineno, "reads a role set"))
        elif isinstance(node, ast.Name) and node.id in ROLE_NAMES:
            found.add((node.lineno, f"names {node.id}"))
        elif isinstance(node, ast.alias) and node.name in ROLE_NAMES:
            found.add((node.lineno, f"imports {node.name}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ROLE_CALLS
            and not _asks_access(node)
        ):
            found.add((node.lineno, f"asks .{node.func.attr}()"))
    for test in _tests(tree):
        if _holds_owner_or_institution(test):
            found.add((getattr(test, "lineno", 0), "compares an institution or an owner"))
    return [f"{filename}:{line} {what}" for line, what in sorted(found)]


def route_decisions() -> list[str]:
    """Every finding in indexer/api/routes/*.py (empty: no route decides on its own)."""
    found: list[str] = []
    for path in sorted(ROUTES.glob("*.py")):
        found += decisions(path.read_text(encoding="utf-8"), path.name)
    return found


def test_no_route_decides_on_its_own() -> None:
    assert route_decisions() == []


# What the routes did before access.py, one line each: every one of them must be found.
OLD_CODE = [
    "if institution == who.institution: pass",
    "ok = owner is None or owner == who.institution",
    "if uid is not None and who.roles & STAFF_ROLES and who.institution: pass",
    "if not who.has('gateway') or not who.institution: raise Forbidden('x')",
    "who.may_write(code)",
    "if reg.study_institution(uid) != code: raise NotFound('x')",
    "x = await lookup_sql.study_institution(pool, uid) == who.institution",
    "if row is None or row.owner_institution != code: raise NotFound('x')",
    "from ...security.auth import PLATFORM_ADMIN",
    "readable = [s for s in studies if s.owner == me]",
    "assert parse_qs(q).get('to') == [who.institution]",
]


@pytest.mark.parametrize("line", OLD_CODE)
def test_a_route_deciding_itself_is_found(line: str) -> None:
    assert decisions(line), line


@pytest.mark.parametrize(
    "line",
    [
        "access.require(access.may_share(who, code))",
        "query = select(Grant).where(Grant.owner_institution == code)",
        "row = Grant(owner_institution=owner, institution_code=who.institution)",
        "if decision.basis == access.GATEWAY: pass",
        "if not access.may_see_alert(who, row.owner_institution): raise NotFound('x')",
    ],
)
def test_passing_facts_on_is_not_deciding(line: str) -> None:
    assert decisions(line) == [], line
