"""Stage 0, raw WESAD recordings -> merged.csv (the `prepare` extra; cvxEDA and cvxopt are GPL-3.0).

`recordings` reads and validates a WESAD folder, `features` cuts windows and computes the merged.csv
features (`python -m emoma.prepare`, `emoma prepare`), `synthetic` writes recordings in the raw format for
tests and demos (`python -m emoma.prepare.synthetic`). Nothing outside this package imports it except the CLI.
"""
