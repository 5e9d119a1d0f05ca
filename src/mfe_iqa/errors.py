"""Errors a user can fix: entry points print their message as one paragraph, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, config or file that the user can fix; the message says what and how."""
