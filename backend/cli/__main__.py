"""``python -m backend.cli``: the ``fleet`` command, as child processes of the local stack
and the tests start it."""

from backend.cli import main

if __name__ == "__main__":  # not when a tool walks the package and imports every module
    main()
