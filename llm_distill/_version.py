"""The package version, in a module that imports nothing so that any part can read it without an import cycle."""

__version__ = "0.1.0"
