"""`python -m batchib` runs the command-line interface."""

from batchib.cli import console_main

console_main()
