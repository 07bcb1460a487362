"""`python -m batchib` runs the command-line interface."""

from batchib.cli import console_main

if __name__ == "__main__":
    console_main()
