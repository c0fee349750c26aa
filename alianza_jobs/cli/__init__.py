"""``alianza-jobs``: the command line: run and trigger jobs, tail logs, database, emulators, doctor.

Exit codes: 0 all good, 1 a job (or check) failed, 2 a usage error (unknown job, cron, flag).
"""

from __future__ import annotations

import click

from alianza_jobs.cli.db import db_group
from alianza_jobs.cli.doctor import doctor_command
from alianza_jobs.cli.emulate import emulate_command
from alianza_jobs.cli.runs import jobs_command, run_command, trigger_command
from alianza_jobs.cli.tail import tail_command

DEFAULT_MODULE = "alianza_jobs.definitions"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(jobs_command)
cli.add_command(run_command)
cli.add_command(trigger_command)
cli.add_command(tail_command)
cli.add_command(db_group)
cli.add_command(emulate_command)
cli.add_command(doctor_command)


def main() -> None:
    cli(obj={})
