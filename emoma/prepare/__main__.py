"""`python -m emoma.prepare`: the same as `emoma prepare`."""

from emoma.prepare.features import main

main()
