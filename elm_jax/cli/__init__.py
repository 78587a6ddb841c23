"""Command-line entry points, one small module per command (they share ``common``)."""
