"""``python -m pvtunnel``, and the ``pvtunnel`` command (`main`).

The command takes a few hundred milliseconds to import trio and the rest of
pvtunnel before `pvtunnel._cli` can handle anything: a Ctrl-C then must not end
in a traceback. So this module (and the package's ``__init__``) imports nothing
heavy, and the CLI is imported inside the handling.
"""

import sys
from typing import NoReturn

# 128 + SIGINT: what a shell expects of a program Ctrl-C stopped.
INTERRUPTED = 130


def main() -> NoReturn:
    """Run the CLI. A Ctrl-C that nothing later handles (while importing, parsing
    flags, reading files) exits quietly with `INTERRUPTED`: the user asked to stop."""
    try:
        from pvtunnel._cli import main as run

        run()
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
