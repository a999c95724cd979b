"""The ``npvit`` command. Each subcommand lives in ``npvit/commands/<name>.py`` and provides
``add_parser(subparsers)`` (which sets ``func``) — this file only collects them and turns an
NpvitError into one line on stderr and a non-zero exit code."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import NpvitError

# Order is the order in `npvit --help`.
COMMANDS = ["predict", "eval", "models", "gradcheck", "convert", "download", "bench", "scoremap",
            "finetune", "verify", "segment"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npvit", description="MobileViT / MobileViTv2 in NumPy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"npvit.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NpvitError as e:
        print(f"npvit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npvit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (`npvit models | head`): stop quietly, as Unix tools do.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
