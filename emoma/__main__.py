"""`python -m emoma COMMAND`: the same as the `emoma` command."""

from emoma.cli import main

main()
