"""No route decides on its own: every access decision is indexer/services/access.py's.

A route *decides* when its code, anywhere under indexer/api/routes/ (subpackages too):
- reads a principal's role set (any `.roles`, or `getattr(x, "roles")`), or names a role
  set or the platform administrators' role (`STAFF_ROLES`, `WRITER_ROLES`,
  `PLATFORM_ADMIN`);
- asks a principal about a role or a permission itself: a call of `.has`, `.has_role`,
  `.has_any`, `.may_read`, `.may_write` or `.may_search_persons` on anything but
  access.py, or of any method of a principal (`who`, `principal`, `caller`);
- compares (==, !=, <, in, is, ...), tests for truth (an `if`, `while`, `assert` or
  conditional expression's test, an operand of `and`, `or`, `not`, a comprehension's
  `if`), or matches (`match` subject, `case` guard or pattern) an expression holding
  a *sensitive* value:
  - any attribute of a principal (`who.institution`, `done.who.subject`,
    `request.state.principal.roles`);
  - an attribute, a `getattr` name or a string subscript whose name holds `institution`,
    `owner` or `subject` (`row.institution_code`, `exam["institution_code"]`,
    `row.grantee_subject`), or a name holding `owner`;
  - a call of a study owner's loaders (`study_institution`, `arrival_owner`);
  - a name assigned from any of these (`me = who.institution` ... `if me == code`).
An attribute of a capitalised name (`Grant.owner_institution == code`) is a SQL column:
it builds a query's filter and decides nothing, so it is left alone; so are the arguments
of access.py's decisions (`access.may_*`, `access.held_by`, `access.require`), and of no
other call of access.py. Routes pass institutions and owners on as values (to access.py,
to a query, to a row).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTES = Path(__file__).resolve().parents[2] / "indexer" / "api" / "routes"
ROLE_NAMES = frozenset({"STAFF_ROLES", "WRITER_ROLES", "PLATFORM_ADMIN"})
ROLE_CALLS = frozenset(
    {"has", "has_role", "has_any", "may_read", "may_write", "may_search_persons"}
)
OWNER_LOADERS = frozenset({"study_institution", "arrival_owner"})
PRINCIPALS = frozenset({"who", "principal", "caller"})
SENSITIVE_WORDS = ("institution", "owner", "subject")


def _sensitive_word(name: str) -> bool:
    return any(word in name.lower() for word in SENSITIVE_WORDS)


def _is_column(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id[:1].isupper()


def _is_principal(node: ast.AST) -> bool:
    """`who`, or any attribute named like a principal (`done.who`, `state.principal`)."""
    if isinstance(node, ast.Name):
        return node.id in PRINCIPALS
    return isinstance(node, ast.Attribute) and node.attr in PRINCIPALS


def _asks_access(node: ast.AST) -> bool:
    """A decision of access.py (`access.may_...(...)`, `held_by`, `require`): what it is
    given is passed on. Any other call of access.py is looked into."""
    func = node.func if isinstance(node, ast.Call) else None
    if not (isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "access"):
        return False
    return func.attr.startswith("may_") or func.attr in ("held_by", "require")


# calls that build a row or a statement from keyword values: the result is the row, not the
# value (`Grant(owner_institution=...)`, `grant_model.upsert(granted_by=who.subject)`)
ROW_BUILDERS = frozenset({"upsert", "insert", "values", "update"})


def _builds_a_row(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name[:1].isupper() or name in ROW_BUILDERS


def _walk(node: ast.AST, keywords: bool = True) -> list[ast.AST]:
    """ast.walk, but not into the arguments of access.py's decisions (nor, with
    keywords=False, into the keyword arguments of a call that builds a row)."""
    found = [node]
    skip = not keywords and isinstance(node, ast.Call) and _builds_a_row(node)
    if not _asks_access(node):
        for child in ast.iter_child_nodes(node):
            if skip and isinstance(child, ast.keyword):
                continue
            found += _walk(child, keywords)
    return found


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _holds_sensitive(node: ast.AST, tainted: set[str], keywords: bool = True) -> bool:
    for sub in _walk(node, keywords):
        if isinstance(sub, ast.Attribute) and not _is_column(sub):
            if _is_principal(sub.value) or _sensitive_word(sub.attr) or sub.attr == "roles":
                return True
        elif isinstance(sub, ast.Subscript):
            key = _const_str(sub.slice)
            if key is not None and _sensitive_word(key):
                return True
        elif isinstance(sub, ast.Name):
            if sub.id in tainted or "owner" in sub.id.lower():
                return True
        elif isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in OWNER_LOADERS:
                return True
            if name == "getattr" and len(sub.args) >= 2:
                attr = _const_str(sub.args[1])
                if _is_principal(sub.args[0]) or (
                    attr and (_sensitive_word(attr) or attr == "roles")
                ):
                    return True
    return False


def _targets(node: ast.AST) -> list[str]:
    """The names an assignment binds (`a`, `a, b`, `*a`), not those it stores into."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Starred):
        return _targets(node.value)
    if isinstance(node, (ast.Tuple, ast.List)):
        return [name for elt in node.elts for name in _targets(elt)]
    return []


def _tainted(tree: ast.AST) -> set[str]:
    """Names assigned from a sensitive value, to a fixed point (`a = who.x; b = a`)."""
    tainted: set[str] = set()
    while True:
        before = len(tainted)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
                value = node.value
                if value is None or not _holds_sensitive(value, tainted, keywords=False):
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    tainted.update(n for n in _targets(target) if n not in PRINCIPALS)
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                if _holds_sensitive(node.iter, tainted):
                    tainted.update(_targets(node.target))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars and _holds_sensitive(item.context_expr, tainted):
                        tainted.update(_targets(item.optional_vars))
        if len(tainted) == before:
            return tainted


def _tests(tree: ast.AST) -> list[ast.AST]:
    """Every expression used as a comparison, a truth test or a match."""
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
        elif isinstance(node, ast.Match):
            found.append(node.subject)
            for case in node.cases:
                if case.guard is not None:
                    found.append(case.guard)
    return found


def _sensitive_pattern(node: ast.AST) -> bool:
    """A `case` pattern naming a sensitive attribute or key (`case P(roles=...)`)."""
    for sub in ast.walk(node):
        names: list[str] = []
        if isinstance(sub, ast.MatchClass):
            names = list(sub.kwd_attrs)
        elif isinstance(sub, ast.MatchMapping):
            names = [k for k in map(_const_str, sub.keys) if k]
        if any(_sensitive_word(n) or n == "roles" for n in names):
            return True
    return False


def decisions(source: str, filename: str = "<route>") -> list[str]:
    """Where this module decides on access itself: "file:line what", one per finding."""
    tree = ast.parse(source, filename)
    tainted = _tainted(tree)
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "roles":
            found.add((node.lineno, "reads a role set"))
        elif isinstance(node, ast.Name) and node.id in ROLE_NAMES:
            found.add((node.lineno, f"names {node.id}"))
        elif isinstance(node, ast.alias) and node.name in ROLE_NAMES:
            found.add((node.lineno, f"imports {node.name}"))
        elif isinstance(node, ast.Call) and not _asks_access(node):
            func = node.func
            if isinstance(func, ast.Attribute) and (
                func.attr in ROLE_CALLS or _is_principal(func.value)
            ):
                found.add((node.lineno, f"asks .{func.attr}()"))
            elif getattr(func, "id", "") == "getattr" and node.args:
                attr = _const_str(node.args[1]) if len(node.args) > 1 else None
                if attr == "roles" or (_is_principal(node.args[0]) and attr is None):
                    found.add((node.lineno, "reads a principal's attribute by name"))
        elif isinstance(node, ast.match_case) and _sensitive_pattern(node.pattern):
            found.add((node.pattern.lineno, "matches an institution, an owner or a role"))
    for test in _tests(tree):
        if _holds_sensitive(test, tainted):
            found.add((getattr(test, "lineno", 0), "compares an institution or an owner"))
    return [f"{filename}:{line} {what}" for line, what in sorted(found)]


def route_files() -> list[Path]:
    return sorted(ROUTES.rglob("*.py"))


def route_decisions() -> list[str]:
    """Every finding under indexer/api/routes/ (empty: no route decides on its own)."""
    found: list[str] = []
    for path in route_files():
        found += decisions(path.read_text(encoding="utf-8"), str(path.relative_to(ROUTES)))
    return found


def test_the_routes_are_all_scanned() -> None:
    names = {path.name for path in route_files()}
    assert len(names) >= 12 and {"authz.py", "ingest.py", "grants.py"} <= names


def test_no_route_decides_on_its_own() -> None:
    assert route_decisions() == []


# What the routes did before access.py, and the review's ways round the first version of
# this test, one snippet each: every one of them must be found.
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
    # the review's bypasses
    "me = who.institution\nif me == code: pass",
    "me = who.institution\nyou = me\nok = you == code",
    "place = await lookup_sql.arrival_owner(pool, uid)\nif place != code: raise NotFound('x')",
    "if row.institution_code != code: raise NotFound('x')",
    "if exam['institution_code'] != code: raise NotFound('x')",
    "if row.grantee_subject != who.subject: raise Forbidden('x')",
    "if 'gateway' in getattr(who, 'roles'): pass",
    "if getattr(row, 'institution_code') == code: pass",
    "if who.has_role('gateway'): pass",
    "if principal.is_admin(): pass",
    "match who.institution:\n    case 'H0001': pass",
    "match row:\n    case {'institution_code': 'H0001'}: pass",
    "match who:\n    case Principal(roles=r): pass",
    "match x:\n    case _ if x == who.institution: pass",
    "if access.sees_whole_archive(who) or who.institution == code: pass",
    "if access.helper(who.institution == code): pass",
    "if access.helper(row.owner_institution): pass",
    "if done.who.institution: pass",
    "for me in [who.institution]:\n    if me == code: pass",
    "if (me := who.institution) == code: pass",
    "allowed = body.to_institution == code",
    "mine = dict(code=who.institution)\nif mine['code'] == code: pass",
    "mine = str(who.institution)\nif code != mine: raise Forbidden('x')",
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
        "if not access.held_by(code, StudyFacts(row.study_instance_uid, row.owner_institution)):\n"
        "    raise NotFound('x')",
        "if access.sees_whole_archive(who): pass",
        "everything = access.sees_whole_archive(who)\nif not everything: pass",
        "decision = access.require(access.may_x(who, row.institution_code))\nif decision: pass",
        "row = Grant(owner_institution=who.institution)\nif row is None: pass",
    ],
)
def test_passing_facts_on_is_not_deciding(line: str) -> None:
    assert decisions(line) == [], line
