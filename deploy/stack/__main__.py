"""`python -m deploy.stack up|down|status|clean|env [--state-dir DIR]`, and
`python -m deploy.stack rotate-key --new-key ID [--timeout S]` (deploy/stack/key_rotation.py)."""

from __future__ import annotations

import argparse
import functools
import sys

from .errors import StackError
from .key_rotation import DEFAULT_TIMEOUT_S, central_nodes, rotate_key
from .launcher import clean, down, load_context, status, up
from .settings import StackSettings

print = functools.partial(print, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "clean", "env", "rotate-key"])
    parser.add_argument("--state-dir", help="state directory (default: $STACK_DIR or var/)")
    parser.add_argument("--new-key", help="rotate-key: id of the new master key")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="rotate-key: seconds each phase waits for every node to confirm",
    )
    args = parser.parse_args(argv)
    if args.command == "rotate-key" and not args.new_key:
        parser.error("rotate-key needs --new-key")
    settings = StackSettings.from_env(args.state_dir)

    if args.command == "clean":
        if settings.state_dir.exists():
            down(load_context(settings))
        clean(settings)
        print(f"removed the stack state in {settings.state_dir}")
        return 0
    ctx = load_context(settings)
    if args.command == "up":
        print(f"starting the stack in {settings.state_dir}")
        try:
            up(ctx)
        except StackError as exc:
            print(f"make up FAILED: {exc.one_line()}", file=sys.stderr)
            print("everything this stack had started has been stopped again", file=sys.stderr)
            return 1
        print(f"stack is up: {settings.stack_env}")
        print(f"  gateway  {ctx.gateway_url}/  (CA certificate: {ctx.pki['ca_cert']})")
        return 0
    if args.command == "down":
        down(ctx)
        return 0
    if args.command == "rotate-key":
        print(f"rotating the central nodes' master key to {args.new_key}")
        try:
            rotate_key(central_nodes(ctx), args.new_key, timeout_s=args.timeout, say=print)
        except StackError as exc:
            print(f"rotate-key FAILED: {exc.one_line()}", file=sys.stderr)
            return 1
        return 0
    if args.command == "env":
        print(settings.stack_env.read_text() if settings.stack_env.exists() else "", end="")
        return 0
    rows = status(ctx)
    for row in rows:
        state = "healthy" if row.healthy else f"DOWN ({row.problem})"
        pid = f"pid {row.pid}" if row.pid else "-"
        print(f"{row.name:<10} {pid:<12} {state}")
    return 0 if all(r.healthy for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
