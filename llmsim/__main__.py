"""`python -m llmsim`: the same as the `llmsim` command."""

from llmsim.cli import main

main()
