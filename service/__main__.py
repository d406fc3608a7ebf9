"""`python -m service` is the `bulkhook` command."""

from .cli import main

main()
