"""Subcommands of the revision CLI, one module each."""
