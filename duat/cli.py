"""The `duat` command line: `duat info`, and the subcommands of the later modules.

Each subcommand lives with the code it drives, in its package's command-line module
(duat.training.cli, duat.bench.cli, duat.experiments.cli; `duat claims` in
duat.experiments.claims), which defines `add_arguments(parser)` and `run(args) -> int`.
Only the chosen subcommand's module is imported, so `duat info` and `duat --help` stay fast. Bad usage prints the usage and
exits with status 2 (argparse's convention).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module that implements it, one-line help). Modules are imported on demand.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("duat.cli", "print versions, the device found (cuda / mps / cpu) and threads"),
    "train": ("duat.training.cli", "train a named model on a dataset"),
    "bench": ("duat.bench.cli", "time serial ViT against Para-Former as depth grows"),
    "reproduce": ("duat.experiments.cli", "run a named experiment and write its results"),
    "claims": ("duat.experiments.claims",
               "the paper's claims, the kit's committed measurements and their verdicts"),
}


# ----------------------------------------------------------------------------- info

def add_arguments(parser: argparse.ArgumentParser) -> None:  # for `duat info`
    parser.add_argument("--json", action="store_true", help="print the information as JSON")


def run(args: argparse.Namespace) -> int:  # for `duat info`
    import json

    from duat.runtime import environment_info, format_info

    info = environment_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


# ----------------------------------------------------------------------------- main

def _chosen_command(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from duat import __version__

    parser = argparse.ArgumentParser(
        prog="duat",
        description="DUAT and Para-Former: theory, models, training and latency benchmarks.")
    parser.add_argument("--version", action="version", version=f"duat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


# What a subcommand raises for input it refuses (names, ranges, files, folders of earlier
# runs; missing datasets and weights are FileNotFoundErrors, and so is a $DUAT_RESULTS that
# names no folder, duat.locations.ResultsFolderError): reported without a traceback.
USAGE_ERRORS = (ValueError, TypeError, FileExistsError, FileNotFoundError, NotADirectoryError,
                IsADirectoryError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command line writes figures to files, never to windows: matplotlib draws with Agg
    # unless the user chose a backend. Set before the subcommand's module (which may import
    # matplotlib) is loaded, and only for this call: a caller's later processes (e.g.
    # notebook kernels started by the same Python) keep their own default.
    chose_backend = "MPLBACKEND" not in os.environ and "matplotlib" not in sys.modules
    if chose_backend:
        os.environ["MPLBACKEND"] = "Agg"
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)  # exits 2 with usage on unknown commands or options
        return _run(args)
    finally:
        if chose_backend:
            os.environ.pop("MPLBACKEND", None)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as err:  # bad input met past the parser: one line, status 2
        print(f"duat {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if type(err).__name__ == "DistributedError":  # duat.distributed: a peer died or hung
            print(f"duat {args.command}: error: {err}", file=sys.stderr)
            return 1
        if type(err).__name__ != "OutOfMemoryError":  # torch's; any other is a bug: traceback
            raise
        print(f"duat {args.command}: error: the device ran out of memory ({err}); "
              f"try a smaller batch or model", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
