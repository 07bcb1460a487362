"""`python -m batchib` runs the command-line interface."""

from batchib.cli import main

main()
