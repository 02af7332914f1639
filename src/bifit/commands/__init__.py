"""Subcommands of the `bifit` command, one module each (see `bifit.cli`)."""
