"""`python -m bench.perf <scenario> [options]`. Each scenario is a module of this package with NAME,
HELP, add_arguments(parser) and run(args) -> exit code; list it in SCENARIOS to make it a subcommand."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Protocol, cast

SCENARIOS = ("overhead", "held", "bytes", "saturation", "instructions", "forms")


class Scenario(Protocol):
    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description="The gateway's performance benchmark.")
    commands = parser.add_subparsers(dest="scenario", required=True)
    scenarios: dict[str, Scenario] = {}
    for name in SCENARIOS:
        module = cast(Scenario, importlib.import_module(f"bench.perf.{name}"))
        scenarios[module.NAME] = module
        module.add_arguments(commands.add_parser(module.NAME, help=module.HELP, description=module.HELP))
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so every process the scenario started is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return scenarios[args.scenario].run(args)


if __name__ == "__main__":
    sys.exit(main())
