"""``udpnest`` command line: subcommands are registered by the modules that implement them."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute): each ``register(subparsers)`` adds its subcommands and sets ``func`` on them.
_SUBCOMMAND_MODULES = (
    "udpnest.cli_endpoint",
    "udpnest.decode",
    "udpnest.lab.cli",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="udpnest", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
