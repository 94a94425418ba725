"""`python -m equinox_cli`: the `equinox` command."""

from equinox_cli.main import app

app(prog_name="equinox")
