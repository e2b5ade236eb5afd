"""The package version (read by setup.cfg and the CLI's ``--version``)."""

__version__ = "0.1.0"
