"""The one exception type for bad user input; the CLI turns it into exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user: a file, row, key or value that cannot be used.

    The message must name the offending file, row or key. The CLI prints it and exits 2.
    """
