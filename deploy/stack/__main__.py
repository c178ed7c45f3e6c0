"""`python -m deploy.stack up|down|status|clean|env [--state-dir DIR]`."""

from __future__ import annotations

import argparse
import functools
import sys

from .errors import StackError
from .launcher import clean, down, load_context, status, up
from .settings import StackSettings

print = functools.partial(print, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "clean", "env"])
    parser.add_argument("--state-dir", help="state directory (default: $STACK_DIR or var/)")
    args = parser.parse_args(argv)
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
