"""Bad input from the user: one line on stderr and exit status 2, never a traceback.

    from errors import UserError, run_main
    run_main(main)     # main() raising UserError("no such file: x") prints "error: no such file: x", exits 2
"""
import sys


class UserError(Exception):
    """Bad input from the user: scripts print the message as one line and exit non-zero."""


def run_main(main):
    """Run a script's main(); a UserError becomes one line on stderr and exit status 2, no traceback."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
