"""User errors: problems a user can fix (bad path, bad column, bad YAML), reported without a traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""


def exit_on_user_error(main):
    """Wrap a CLI `main` so that a UserError prints one line and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
