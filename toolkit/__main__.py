"""``python -m toolkit``: the command line. Each subcommand is a thin call into the core.

Exit codes (DESIGN.md): 0 success; 2 user error (one line on stderr, no traceback unless --debug);
3 a check failed; 1 internal error; 130 interrupted after a checkpoint.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from toolkit.cli import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m toolkit",
        description="Train, compress and measure models for edge devices.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"toolkit.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from toolkit.errors import ToolkitError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False) or os.environ.get("TOOLKIT_DEBUG") == "1"
    try:
        return int(args._module.run(args) or 0)
    except ToolkitError as e:
        if debug:
            traceback.print_exc()
        prefix = "interrupted" if e.exit_code == 130 else "error"
        print(f"{prefix}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the system refused a write: the user's to fix, one line naming the file
        line = _os_error_line(e)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr)
        return 2
    except Exception as e:  # an internal error: say so, and how to see more
        if debug:
            traceback.print_exc()
        else:
            print(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _os_error_line(e: OSError) -> str | None:
    """One line for the OS errors a user can fix (permissions, a read-only or full disk), else None."""
    import errno

    where = e.filename or "a file"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}: cannot write it ({e.strerror}); choose another --out, or make the folder writable, then "
                f"run the same command again")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {where}: free some space, then run the same command again to continue"
    return None


if __name__ == "__main__":
    sys.exit(main())
