"""The error every bad configuration raises: one line naming the key and the fix (the CLI exits 2 on it).

A leaf module: it imports nothing of the project, so any module may raise a ConfigError without pulling in
what validation or training need.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the fix."""


def refuse(key: str, problem: str, fix: str) -> None:
    """Raise the one-line error for ``key``: ``config key 'KEY': PROBLEM. Fix: FIX``."""
    raise ConfigError(f"config key '{key}': {problem}. Fix: {fix}")


def require(ok: bool, key: str, problem: str, fix: str) -> None:
    """:func:`refuse` unless ``ok``."""
    if not ok:
        refuse(key, problem, fix)
