"""User errors: problems a user can fix (bad path, bad column, bad YAML), reported without a traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""


class Interrupted(Exception):
    """A run stopped before it finished (Ctrl-C, a stopped cluster); what finished is kept and can be continued."""


def exit_on_user_error(main):
    """Wrap a CLI `main`: a UserError prints one line and exits with code 2; Ctrl-C (or a run stopped before
    it finished) prints one line saying how to continue and exits with 130. No traceback either way."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except Interrupted as err:
            print(f"interrupted: {err}", file=sys.stderr)
            sys.exit(130)
        except KeyboardInterrupt:
            print("interrupted before anything was kept: run the command again", file=sys.stderr)
            sys.exit(130)

    return wrapper
