"""The one error type for bad user input, shared by every layer, and the one warning type.

The CLI turns an ``InputError`` into a one-line message and exit code 2; library
callers can catch it.  The message always names the file (or option), the row
when there is one, and what was expected.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a missing file, a wrong format, a bad row or an unknown name."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None):
        self.message = message
        self.source = source
        self.row = row
        where = ""
        if source is not None:
            where = f"{source}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)


def read_toml(path, expected: str) -> dict:
    """The TOML file at ``path``; an ``InputError`` naming it and ``expected`` (what it should
    be, e.g. "a TOML policy") when it is missing or not TOML."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"missing file; expected {expected}", source=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"expected {expected}: {exc}", source=str(path)) from None


class TraceWarning(UserWarning):
    """Input that was read with a loss the user should know of, such as a truncated file."""
