"""User errors: problems a user can fix (bad path, bad column, bad YAML), reported without a traceback."""

import contextlib
import functools
import signal
import sys
import threading
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""


class Interrupted(Exception):
    """A run stopped before it finished (Ctrl-C, a stopped cluster); what finished is kept and can be continued."""


def invoked_as(command: str) -> str:
    """How the user runs `command` (cv, search), for hints and "continue it with" lines: `python PATH/cv.py`
    through the repository's wrapper (the path as typed), `python -m emoma cv`, else `emoma cv`."""
    typed = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(typed).name == f"{command}.py":
        return f"python {typed}"
    return f"python -m emoma {command}" if Path(typed).name == "__main__.py" else f"emoma {command}"


def exit_on_user_error(main):
    """Wrap a CLI `main`: a UserError prints one line and exits with code 2; Ctrl-C, SIGTERM (a batch scheduler's
    preemption) or a run stopped before it finished prints one line saying how to continue and exits with 130.
    No traceback either way."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_ctrl_c():
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


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """While active (main thread only), SIGTERM takes Ctrl-C's path: whatever handles SIGINT now handles it
    (during a search, Tune's handler, which ends the run with its state saved), else KeyboardInterrupt is
    raised, even where SIGINT itself is ignored (a background job)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
            on_interrupt(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
