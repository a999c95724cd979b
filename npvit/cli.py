"""The ``npvit`` command. Each subcommand lives in ``npvit/commands/<name>.py`` and provides
``add_parser(subparsers)`` (which sets ``func``) — this file only collects them and turns an
NpvitError into one line on stderr and a non-zero exit code."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from .errors import NpvitError, error_line

# Order is the order in `npvit --help`.
COMMANDS = ["predict", "eval", "models", "gradcheck", "convert", "download", "bench", "scoremap",
            "finetune", "verify", "synthetic", "segment", "detect"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npvit", description="MobileViT / MobileViTv2 in NumPy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"npvit.commands.{name}").add_parser(sub)
    return parser


def _writable(stream) -> bool:
    """Whether ``stream``'s file descriptor is open for writing (a closed fd 2 may since have
    been reused by a file opened for reading, e.g. by a launcher script)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):   # an in-memory stream (tests): trust it
        return True
    try:
        import fcntl
        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
    except ImportError:        # not on Unix: trust the stream
        return True
    except OSError:
        return False


def _safe_streams() -> None:
    """File names need not be valid UTF-8 (they come from the file system as surrogates): print
    them escaped instead of failing on a strict stdout. With stderr closed (2>&-), Python sets
    sys.stderr to None and print(file=None) would write errors to stdout: send them nowhere."""
    if sys.stderr is None or not _writable(sys.stderr):
        sys.stderr = open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _terminate(signum, frame):
    """SIGTERM as an exception, so files being written are removed (npvit.outputs) on the way out."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    _safe_streams()
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except NpvitError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except MemoryError:
        print(error_line("out of memory (a smaller --size or --batch-size may fit)"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npvit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (`npvit models | head`): stop quietly, as Unix tools do.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
