"""The ``structsearch`` command: search, train, report, inspect, export.

Bad input exits with code 2 and one line on stderr naming the problem and the fix (``--debug``
shows the traceback); nothing starts Ray before the input has been checked.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="structsearch",
        description="Search per-layer channel widths of a CNN under a MACs budget with Ray Tune.")
    parser.add_argument("--version", action="version", version=f"structsearch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run a width search (baseline, candidates, final stage, report)")
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--out", help="run directory (default runs/<config>-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set budget.macs_ratio=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT")
    p.add_argument("--from", dest="warm_from", action="append", default=[], metavar="RUN_DIR",
                   help="start from a finished run's candidates (same model, data and candidate "
                        "training; another budget or searcher): known width vectors are not "
                        "trained again (repeatable)")

    p = sub.add_parser("train", help="train (or load) the baseline of a config only")
    p.add_argument("config")
    p.add_argument("--out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("sensitivity", help="Li et al.'s per-group pruning sensitivity curves of the "
                                           "baseline and their width vector under the budget")
    p.add_argument("config")
    p.add_argument("--out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("report", help="re-render report.md and plots of a run directory")
    p.add_argument("run_dir")

    p = sub.add_parser("inspect", help="list a model's prunable groups with widths, MACs and params")
    p.add_argument("target", help="a config file, a registry model name, or a saved model directory")
    p.add_argument("--input-shape", help="C,H,W for a model name (default from the model family)")
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--min-ratio", type=float, default=0.1)

    p = sub.add_parser("export", help="export the winner of a run (pt or onnx)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["pt", "onnx"], default="pt")
    p.add_argument("--which", default="finetune",
                   help="winner (search weights), finetune, scratch_e or scratch_b (default finetune)")
    p.add_argument("--out", help="output file")
    return parser


def _inspect(args) -> int:
    from . import config as config_mod
    from . import models
    from .space import WidthSpace
    from .surgery import read_arch

    target = Path(args.target)
    if target.is_dir() or target.name == "arch.json":
        arch = read_arch(target)
        model = models.build(arch["model"], **arch["model_kwargs"])
        opts = arch.get("space", {})
        space = WidthSpace.from_model(model, arch["input_shape"], round_to=opts.get("round_to", 1),
                                      min_ratio=opts.get("min_ratio", 0.1), ignore=tuple(opts.get("ignore", ())))
        print(space.table(arch["widths"]))
        return 0
    if target.suffix in (".yaml", ".yml") or target.is_file():
        from .pipeline import build_model, load_data
        cfg = config_mod.load(target)
        _, splits = load_data(cfg)
        model, kwargs = build_model(cfg, splits)
        space = WidthSpace.from_model(model, splits.input_shape, ignore=cfg.space.ignore,
                                      round_to=cfg.space.round_to, min_ratio=cfg.space.min_ratio)
        print(f"{cfg.model.name} on {cfg.data.name} {tuple(splits.input_shape)}")
        print(space.table())
        return 0
    name = args.target
    try:
        size = models.default_input_size(name)
    except KeyError:
        size = 32
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
            assert len(shape) == 3
        except (ValueError, AssertionError):
            raise config_mod.ConfigError("--input-shape: expected C,H,W such as 3,32,32") from None
    else:
        shape = (3, size, size)
    try:
        model = models.build(name, in_channels=shape[0])
    except KeyError as exc:
        raise config_mod.ConfigError(f"inspect: {exc.args[0]}") from None
    space = WidthSpace.from_model(model, shape, round_to=args.round_to, min_ratio=args.min_ratio)
    print(f"{name} at {shape}")
    print(space.table())
    return 0


def _export(args) -> int:
    from .surgery import export_onnx, load_pruned, read_arch
    import torch

    run_dir = Path(args.run_dir)
    src = run_dir / "winner" if args.which == "winner" else run_dir / "winner" / args.which
    if not (src / "arch.json").is_file():
        from .config import ConfigError
        raise ConfigError(f"{src / 'arch.json'} not found; pass the directory of a finished "
                          f"`structsearch search` run (or --which winner|finetune|scratch_e|scratch_b)")
    model = load_pruned(src)
    arch = read_arch(src)
    out = Path(args.out) if args.out else run_dir / f"pruned_{args.which}.{args.format}"
    if args.format == "onnx":
        export_onnx(model, arch["input_shape"], out)
    else:
        # A TorchScript file runs without structsearch installed.
        scripted = torch.jit.trace(model.eval(), torch.randn(1, *arch["input_shape"]))
        scripted.save(str(out))
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .config import ConfigError
    from .data import DatasetNotFound
    from .space import WidthError
    from .surgery import CheckpointError
    from .pipeline import SearchFailed

    bad_input = (ConfigError, DatasetNotFound, WidthError, CheckpointError)
    try:
        from .journal import JournalError
        from .pipeline import RunDirError
        bad_input = bad_input + (RunDirError, JournalError)
        if args.command == "search":
            from . import config as config_mod
            from .pipeline import run_search
            from .signals import interrupt_on_sigterm
            interrupt_on_sigterm()
            cfg = config_mod.load(args.config, args.set)
            run_search(cfg, out=args.out, config_path=args.config, resume=args.resume,
                       address=args.address, warm_from=args.warm_from)
        elif args.command == "train":
            from . import config as config_mod
            from .commands import run_baseline
            cfg = config_mod.load(args.config, args.set)
            print(run_baseline(cfg, out=args.out, config_path=args.config))
        elif args.command == "sensitivity":
            from . import config as config_mod
            from .commands import run_sensitivity
            cfg = config_mod.load(args.config, args.set)
            print(run_sensitivity(cfg, out=args.out, config_path=args.config))
        elif args.command == "report":
            from .report import render
            run_dir = Path(args.run_dir)
            if not (run_dir / "summary.json").is_file():
                raise ConfigError(f"{run_dir} has no summary.json; pass a run directory of structsearch search")
            print(render(run_dir))
        elif args.command == "inspect":
            return _inspect(args)
        elif args.command == "export":
            return _export(args)
        return 0
    except bad_input as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"structsearch: error: {message}", file=sys.stderr)
        return 2
    except SearchFailed as exc:
        if args.debug:
            traceback.print_exc()
        print(f"structsearch: search failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("structsearch: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
