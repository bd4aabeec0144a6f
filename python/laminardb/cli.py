"""The ``laminardb`` command line (installed with the package).

``laminardb run pipeline.sql`` executes a file of statements, starts the pipeline and shows live
progress until Ctrl-C; ``laminardb sql [DIR]`` opens an interactive prompt.
"""

import sys

from laminardb import _laminardb


def main() -> None:
    """Entry point of the ``laminardb`` console script."""
    sys.stdout.flush()
    sys.exit(_laminardb.cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
