"""Fresh sample studies per test run, so a rerun against a reused stack (STACK_ENV) proves
the same thing as the first run instead of finding last run's study already there."""

import random


def fresh_seed() -> int:
    return random.randrange(1_000_000, 9_000_000)  # noqa: S311 - a sample seed, not a secret
