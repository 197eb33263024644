"""``python -m backend.cli``: the ``fleet`` command, as child processes of the local stack
and the tests start it."""

from backend.cli import main

main()
