"""Errors that castlab raises for bad input: each names the file and the problem."""

from __future__ import annotations


class CastlabError(Exception):
    """Base class for user-facing castlab errors (printed without a traceback by the CLI)."""


class InputError(CastlabError):
    """Bad input: a missing, empty, corrupt or unsupported file or folder."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(CastlabError):
    """A setting is missing or invalid; the message names the setting to change."""


class StackError(CastlabError):
    """The local stack (Label Studio, Prefect server, ML backend) cannot start or be reached."""
