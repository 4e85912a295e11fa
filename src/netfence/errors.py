"""Errors that reach the user as one line and an exit status (never a traceback)."""

from __future__ import annotations


class NetfenceError(Exception):
    """An error with a message meant for the user and the exit status to leave with."""

    exit_code = 1

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message} ({self.remedy})" if self.remedy else self.message


class UsageError(NetfenceError):
    """Bad input from the command line or a profile: exit status 2, like click's usage errors."""

    exit_code = 2


class ProfileError(UsageError):
    """A permission profile that cannot be loaded; names the file, field and bad value."""


class PrivilegeError(UsageError):
    """The operation needs root (or equivalent capabilities) and does not have it."""
