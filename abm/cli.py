"""The ``tme`` command line.

User errors (bad config, unusable files, a taken output directory, a missing GPU) print one clear message and
exit with status 2, without a traceback. An interrupted run exits with 130 after closing its file cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys

from abm import __version__

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def _overrides(args) -> list[str]:
    items = list(args.set or [])
    if getattr(args, "seed", None) is not None:
        items.append(f"seed={args.seed}")
    if getattr(args, "backend", None) is not None:
        items.append(f"backend={json.dumps(args.backend)}")
    return items


def _load(args):
    from abm.config import load_config

    return load_config(args.config, _overrides(args))


def _cmd_validate(args) -> int:
    config = _load(args)
    print(f"{args.config}: valid ({config.ndim}-D grid {config.grid.shape}, {config.n_steps} steps of "
          f"{config.time.dt_min:g} min, backend {config.backend})")
    return 0


def _cmd_run(args) -> int:
    from abm.runner import run_simulation

    config = _load(args)
    result = run_simulation(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    m = result.final
    print(f"output: {result.out_dir}/  (sim.h5, config.resolved.toml, run.log, summary.png)")
    print(
        f"t = {result.time_min / 1440:.2f} days in {result.steps} steps, {result.wall_s:.1f} s wall | "
        f"tumour cells {int(m.get('tumour_cells', 0))}, lesion diameter {m.get('tumour_diameter_um', 0):.0f} µm, "
        f"necrotic voxels {int(m.get('necrotic_voxels', 0))}, hypoxic fraction {m.get('hypoxic_fraction', 0):.2f}"
    )


def _cmd_config_schema(args) -> int:
    from abm.config import Config

    print(json.dumps(Config.model_json_schema(), indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tme``."""
    p = argparse.ArgumentParser(prog="tme", description="Tumour-microenvironment agent-based simulator.")
    p.add_argument("--version", action="version", version=f"tme-abm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def config_args(sp):
        sp.add_argument("config", help="TOML config file")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value (TOML syntax), e.g. --set grid.shape=[64,64]; repeatable")
        sp.add_argument("--seed", type=int, help="root seed (same as --set seed=N)")
        sp.add_argument("--backend", choices=["numpy", "cupy", "auto"], help="array backend")

    sp = sub.add_parser("run", help="run a simulation from a config")
    config_args(sp)
    sp.add_argument("--out", help="output directory (default runs/<name>)")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_run)

    sp = sub.add_parser("validate", help="check a config without running it")
    config_args(sp)
    sp.set_defaults(func=_cmd_validate)

    sp = sub.add_parser("config", help="config utilities")
    csub = sp.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    csub.required = True
    sc = csub.add_parser("schema", help="print the config's JSON schema")
    sc.set_defaults(func=_cmd_config_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tme``; returns the exit status."""
    from abm.backend import BackendError
    from abm.config import ConfigError
    from abm.io.reader import RunFileError
    from abm.runner import OutputExistsError, RunInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunFileError, OutputExistsError, BackendError, UserError) as exc:
        print(f"tme: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as exc:
        print(f"tme: {exc}", file=sys.stderr)
        _print_summary(exc.result)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("tme: aborted; snapshots written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # disk full, permission denied, ...
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"tme: error: could not write or read a file{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
