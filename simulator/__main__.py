"""``python -m simulator``: the options the simulator adds to Locust, with their environment
variables. ``locust -f scenarios --help`` cannot list them: Locust prints its help before it
imports the locustfile that adds them (locustio/locust#2917)."""

from __future__ import annotations

from locust.argument_parser import get_empty_argument_parser

from simulator.plugin import add_options


def main() -> None:
    parser = get_empty_argument_parser(add_help=True)
    parser.prog = "locust -f scenarios"
    parser.description = (
        "The simulator's options, next to Locust's own (locust --help). Each is also a "
        "LOCUST_<NAME> environment variable or a [tool.locust] entry in pyproject.toml."
    )
    add_options(parser)
    parser.parse_args()  # --help prints it all and exits
    parser.print_help()


if __name__ == "__main__":
    main()
