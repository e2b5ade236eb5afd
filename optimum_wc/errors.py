"""One exception hierarchy for the package.

Every error a user can cause derives from :class:`OptimumWCError`, and every
message names what was wrong and how to fix it.
"""

from __future__ import annotations


class OptimumWCError(Exception):
    """Base class of every error raised by optimum-wc."""


class ConfigError(OptimumWCError, ValueError):
    """A compression option has a value that is not allowed."""


class GroupSizeError(ConfigError):
    """The requested group size does not divide some layers' input channels."""


class NotYetSupportedError(OptimumWCError, NotImplementedError):
    """A valid option whose algorithm this version does not implement yet (public API; nothing raises it now)."""


class ExportError(OptimumWCError):
    """The model could not be exported (missing folder, unsupported model, unwritable output)."""


class ModelError(OptimumWCError):
    """A model or a saved folder does not have the structure optimum-wc needs (graph, rt_info, schema version)."""
