"""`python -m metalens ...` is the `metalens` command."""

from .cli import main

main()
