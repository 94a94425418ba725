"""``equinox``: a thin typer layer over the library.

Each command lives in its own module and calls one library function that tests call
directly; the modules parse options, show progress and turn bad input into a one-line
error with exit code 2 (``equinox_cli.common.user_errors``).
"""

from __future__ import annotations

import typer

from equinox_cli import audit_cmd, predictors_cmd, replay_cmd, serve_cmd, sweep_cmd, traces_cmd
from equinox_cli.common import console

app = typer.Typer(
    name="equinox",
    help="Replay multi-tenant LLM workloads under fair schedulers and audit who got served.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("equinox-fair")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        console.print(f"equinox {version}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """Replay multi-tenant LLM workloads under fair schedulers and audit who got served."""


app.command("replay")(replay_cmd.replay)
app.command("audit")(audit_cmd.audit)
app.command("sweep")(sweep_cmd.sweep)
app.command("train-predictors")(predictors_cmd.train_predictors)
app.command("serve", context_settings=serve_cmd.SERVE_CONTEXT)(serve_cmd.serve)
app.command("calibrate")(serve_cmd.calibrate)
app.add_typer(traces_cmd.app, name="traces")


@app.command("presets")
def list_presets():
    """Engine presets: hardware, model, context limit (max_model_len), KV capacity and batch limits."""
    from rich.table import Table

    from engine.presets import PRESETS

    table = Table()
    table.add_column("preset", no_wrap=True)
    for header in ("GPU x TP", "context", "KV tokens", "max running", "token budget"):
        table.add_column(header, justify="right")
    for name, p in PRESETS.items():
        gpu = f"{p.hardware.name} x{p.tensor_parallel}"
        table.add_row(name, gpu, f"{p.max_model_len:,}", f"{p.kv_capacity_tokens:,}", str(p.max_running),
                      str(p.max_batch_tokens))  # fmt: skip
    console.print(table)


@app.command("schedulers")
def list_schedulers():
    """The scheduling policies replay accepts."""
    from rich.table import Table

    from schedulers import POLICIES

    table = Table("scheduler", "what it does")
    for name, (_, text) in POLICIES.items():
        table.add_row(name, text)
    console.print(table)


if __name__ == "__main__":
    app()
