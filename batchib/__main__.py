"""`python -m batchib` runs the command-line interface."""

from batchib.launch import main

if __name__ == "__main__":
    main()
