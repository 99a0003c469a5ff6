"""What every command line of nnbox shares (`python -m gan.evaluate`, `python -m gan.report` and the
examples, through examples/_cli.py): a mistake is one line on stderr, exit status 2.

    try:
        ...
    except (OSError, ValueError) as error:
        return fail("gan.report", error)
"""
import os
import sys
import traceback


def fail(program, error, hint=None):
    """Print `program: error (hint)` on stderr as one line, after the exception's full traceback when
    the environment variable NNBOX_TRACEBACK is set (to anything but "" or "0", e.g. NNBOX_TRACEBACK=1);
    returns the exit status, 2. `error`: an exception (or a message)."""
    if isinstance(error, BaseException) and os.environ.get("NNBOX_TRACEBACK", "").strip() not in ("", "0"):
        traceback.print_exception(error, file=sys.stderr)
    message = ' '.join(str(error).split()) or type(error).__name__
    print(f"{program}: {message}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    return 2
