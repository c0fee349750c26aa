"""Alianza's scheduled background jobs, rebuilt on Dagster."""
