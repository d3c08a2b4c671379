"""Errors meant for users: one clear line (what, where, what to do), exit code 2."""

from __future__ import annotations


class LungfuseError(Exception):
    """A problem with the user's input or environment, reported as one line.

    The CLI prints ``error: <message>`` and exits with code 2 (no traceback unless
    ``--debug``). Messages should say what is wrong, where, and what to do.
    """

    exit_code = 2


class ConfigError(LungfuseError):
    """The experiment configuration is invalid."""


class DataError(LungfuseError):
    """An input data file is missing, unreadable or malformed."""


class PluginError(LungfuseError):
    """A plugin could not be loaded, is incompatible, or clashes with another."""
