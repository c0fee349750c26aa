"""``alianza-jobs``: the command line: run and trigger jobs, tail logs, database, emulators, doctor,
the Stream webhook receiver.

Exit codes: 0 all good, 1 a job (or check) failed, 2 a usage error (unknown job, cron, flag).

Subcommands load when invoked: ``webhooks serve`` is a long-running server that must stay small,
and importing Dagster (which most other commands need) would double its memory.
"""

from __future__ import annotations

import importlib

import click

DEFAULT_MODULE = "alianza_jobs.definitions"

# name -> "module:attribute" of the click command.
COMMANDS = {
    "jobs": "alianza_jobs.cli.runs:jobs_command",
    "run": "alianza_jobs.cli.runs:run_command",
    "trigger": "alianza_jobs.cli.runs:trigger_command",
    "tail": "alianza_jobs.cli.tail:tail_command",
    "db": "alianza_jobs.cli.db:db_group",
    "emulate": "alianza_jobs.cli.emulate:emulate_command",
    "doctor": "alianza_jobs.cli.doctor:doctor_command",
    "webhooks": "alianza_jobs.cli.webhooks:webhooks_group",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-m",
    "--module",
    default=DEFAULT_MODULE,
    show_default=True,
    envvar="ALIANZA_DEFINITIONS_MODULE",
    help="Python module whose `defs` is the code location (tests point it at their own).",
)
@click.pass_context
def cli(ctx: click.Context, module: str) -> None:
    """Alianza's scheduled jobs on Dagster."""
    ctx.ensure_object(dict)
    ctx.obj["module"] = module


def main() -> None:
    cli(obj={})
