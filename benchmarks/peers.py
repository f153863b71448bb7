"""Peers: structsearch's default search beside the tools users would pick instead, from one
trained baseline per seed, every architecture trained by the same protocol.

Tools (``--tools``): ``structsearch`` (its default searcher, criterion and re-evaluation,
``run_search`` with the baseline as ``model.checkpoint``; ``--candidates`` and
``--search-epochs`` size it), ``torch_pruning`` (Torch-Pruning's ``BasePruner``, the
1.x ``MetaPruner``, with ``global_pruning=True`` and L1 magnitude importance, stepped until the
MACs target is met, the classifier's outputs ignored) and ``modelopt`` (NVIDIA ModelOpt
FastNAS, ``modelopt.torch.prune.prune(mode="fastnas")``, optional: ``pip install -e
".[peers]"``).

The same for every tool: the budget (``--budget`` x the baseline's MACs), the smallest width of a
layer (``space.min_ratio``: 10% of its channels), the channel granularity (1) and the one counter
that judges the result: fvcore's conv + linear MACs (one per multiply-accumulate, bias excluded)
and the module's parameter count (BN included). Torch-Pruning checks its per-layer floor
(``max_pruning_ratio``) before a step, so a layer can end just below it. ModelOpt's ``flops``
constraint is 2 x MACs as torchprofile counts them (its pooling ops included, BN left out), so
it gets 2 x the MACs target.

Protocol for every architecture (structsearch's final stage): **fine-tune** = a candidate's
training (``search.epochs`` at ``search.lr``, cosine) from the tool's pruned weights, then
``final.finetune_epochs`` at ``final.finetune_lr`` (constant); structsearch's winner already had
the candidate's training in its search (RUN_DIR/winner/weights.pt), so it gets the fine-tune
only. **Scratch-B** = a fresh initialisation (each module's ``reset_parameters``, as
structsearch's scratch runs) trained ``int(baseline epochs x baseline MACs / pruned MACs)``
epochs with the baseline's recipe. Test accuracy on the held-out test split, mean +- standard
error over seeds; the speed-up is ``structsearch.timing.speedup`` (interleaved, minimum of runs,
one thread) at the training batch size.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

TOOLS = ("structsearch", "torch_pruning", "modelopt")
TITLES = {"structsearch": "structsearch (default search)",
          "torch_pruning": "Torch-Pruning global L1",
          "modelopt": "ModelOpt FastNAS"}
PEERS_EXTRA = 'pip install -e ".[peers]"'
MAC_OPS = {"conv", "linear", "addmm", "matmul", "bmm"}  # fvcore: one "flop" per MAC for these


@dataclasses.dataclass
class Pruned:
    """A tool's result: its network (with the weights it left), what the search cost."""

    tool: str
    model: object
    seconds: float
    subnets: int
    subnets_note: str  # what ``subnets`` counts, e.g. "scored (BN recalibrated, not trained)"
    trained: bool = False  # the weights already had a candidate's training (structsearch)


# ------------------------------------------------------------------------------ settings
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--budget", type=float, default=0.25, help="fraction of the baseline's MACs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tools", nargs="*", default=None, help=f"subset of {', '.join(TOOLS)}")
    ap.add_argument("--candidates", type=int, default=8, help="structsearch's candidates")
    ap.add_argument("--search-epochs", type=int, default=1, help="a candidate's epochs")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--baseline-epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true",
                    help="digits, 1 seed, tiny epochs, 3 candidates; structsearch and "
                         "Torch-Pruning")
    ap.add_argument("--out", default=None, help="keep run directories here")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.data, args.seeds, args.candidates = "digits", 1, 3
        args.search_epochs, args.finetune_epochs, args.baseline_epochs = 1, 1, 3
    if args.tools is None:
        args.tools = ["structsearch", "torch_pruning"] if args.quick else list(TOOLS)
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        ap.error(f"unknown tool {sorted(unknown)[0]!r}; choose from {', '.join(TOOLS)}")
    return args


def config_dict(args, seed: int, checkpoint: str | None) -> dict:
    """The structsearch config of one seed: its defaults, except the sizes set by the flags."""
    search = {"candidates": args.candidates, "epochs": args.search_epochs, "lr": 0.01,
              "concurrent": 2}
    final = {"finetune_epochs": args.finetune_epochs, "finetune_lr": 0.01, "scratch": []}
    if args.quick:
        search["reevaluate"] = 0
        final["baselines"] = []
    return {"seed": seed, "model": {"name": args.model, "checkpoint": checkpoint},
            "data": {"name": args.data, "batch_size": args.batch_size},
            "baseline": {"epochs": args.baseline_epochs, "lr": 0.2, "schedule": "cosine"},
            "budget": {"macs_ratio": args.budget}, "search": search, "final": final}


def available_tools(tools: list[str]) -> list[str]:
    """The requested tools that can run here; a missing optional peer is said in one line."""
    out = []
    for tool in tools:
        if tool == "modelopt":
            missing = [m for m in ("modelopt", "torchprofile")
                       if importlib.util.find_spec(m) is None]
            if missing:
                print(f"modelopt: skipped, {' and '.join(missing)} not installed; "
                      f"install with {PEERS_EXTRA}", flush=True)
                continue
        out.append(tool)
    return out


# ------------------------------------------------------------------------------ counting
def count(model, input_shape) -> tuple[int, int]:
    """(conv + linear MACs by fvcore, parameter count) of one input: the one counter here."""
    import torch
    from fvcore.nn import FlopCountAnalysis
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore traces with torch.jit, which warns
        analysis = FlopCountAnalysis(model, torch.zeros(1, *input_shape))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        macs = sum(v for op, v in analysis.by_operator().items() if op in MAC_OPS)
    model.train(was_training)
    return int(macs), int(sum(p.numel() for p in model.parameters()))


def widths(model) -> list[int]:
    """Output channels of every conv, in module order (what each tool kept)."""
    from torch import nn
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def classifier(model, num_classes: int):
    """The output layer: the last Linear (or 1x1 conv) with ``num_classes`` outputs."""
    from torch import nn
    last = None
    for module in model.modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_classes) or \
                (isinstance(module, nn.Conv2d) and module.out_channels == num_classes):
            last = module
    return last


# ------------------------------------------------------------------------------ the tools
def run_structsearch(cfg_dict: dict, out: Path) -> Pruned:
    """structsearch's default search from the checkpoint; the winner with its candidate weights.
    The search's wall time ends when winner/ is written (before the final stage)."""
    from structsearch import config as C
    from structsearch.pipeline import run_search
    from structsearch.surgery import load_pruned
    start = time.time()
    run_search(C.from_dict(cfg_dict), out=str(out))
    summary = json.loads((out / "summary.json").read_text())
    seconds = (out / "winner" / "arch.json").stat().st_mtime - start
    repeats = sum(len(e["val_acc_repeats"]) for e in summary.get("reevaluation") or [])
    evaluated = summary["search"]["evaluated"]
    epochs = summary["search"]["epochs"]
    note = f"trained ({evaluated} candidates + {repeats} re-runs, {epochs} ep each)"
    return Pruned("structsearch", load_pruned(out / "winner"), seconds, evaluated + repeats,
                  note, trained=True)


def run_torch_pruning(baseline, input_shape, target: float, num_classes: int,
                      min_ratio: float, steps: int = 200) -> Pruned:
    """Torch-Pruning's global pruning (L1 magnitude, normalised per group as its default) in
    ``steps`` small increments up to ``1 - min_ratio`` of the channels, stopped at the first
    step whose MACs (the one counter) are within ``target``."""
    import torch
    import torch_pruning as tp
    model = copy.deepcopy(baseline).eval()
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, torch.zeros(1, *input_shape), importance=tp.importance.MagnitudeImportance(p=1),
        global_pruning=True, pruning_ratio=1 - min_ratio, max_pruning_ratio=1 - min_ratio,
        iterative_steps=steps, ignored_layers=[classifier(model, num_classes)])
    for step in range(1, steps + 1):
        pruner.step()
        if count(model, input_shape)[0] <= target:
            break
    else:
        raise RuntimeError(f"Torch-Pruning did not reach {target:.0f} MACs in {steps} steps")
    return Pruned("torch_pruning", model, time.perf_counter() - start, step,
                  "pruning steps, none trained or scored")


def run_modelopt(baseline, splits, target: float, min_ratio: float, batch_size: int) -> Pruned:
    """ModelOpt FastNAS under ``flops <= 2 x target`` (torchprofile MACs x 2): BN recalibrated
    on 20 training batches, each sub-network scored by validation accuracy (counted)."""
    import torch
    import modelopt.torch.prune as mtp
    from structsearch.train import evaluate
    ratios = tuple(round(0.05 * i, 2) for i in range(round(min_ratio / 0.05), 21))
    rules = {"nn.Conv2d": {"*": {"channels_ratio": ratios, "channel_divisor": 1}},
             "nn.BatchNorm2d": {"*": {"features_ratio": ratios, "feature_divisor": 1}},
             "nn.Linear": {"*": {"features_ratio": ratios, "feature_divisor": 1}}}
    calls = [0]

    def score(model) -> float:
        calls[0] += 1
        return 100 * evaluate(model, splits.val)["top1"]
    loader = list(splits.train.batches(batch_size, shuffle=True, augment=False, seed=0))[:20]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = mtp.prune(copy.deepcopy(baseline), mode=[("fastnas", rules)],
                             constraints={"flops": 2 * target},
                             dummy_input=torch.zeros(1, *splits.input_shape),
                             config={"data_loader": loader, "collect_func": lambda b: b[0],
                                     "score_func": score, "verbose": False})
    return Pruned("modelopt", model, time.perf_counter() - start, calls[0],
                  "scored (BN recalibrated, not trained)")


# ------------------------------------------------------------------------------ the protocol
def recipes(cfg) -> dict:
    """The TrainSpecs of the protocol, from the run's config (structsearch's final stage)."""
    from structsearch.config import fine_tune_epochs
    from structsearch.pipeline import baseline_spec
    base = baseline_spec(cfg)
    return {"candidate": dataclasses.replace(base, epochs=cfg.search.epochs, lr=cfg.search.lr,
                                             schedule=cfg.search.schedule),
            "finetune": dataclasses.replace(base, epochs=fine_tune_epochs(cfg),
                                            lr=cfg.final.finetune_lr, schedule="constant"),
            "scratch": dataclasses.replace(base, lr=cfg.final.scratch_lr or base.lr)}


def reset_parameters(model) -> None:
    """A fresh initialisation of any pruned module (as structsearch's scratch runs)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()


def finetuned(pruned: Pruned, splits, specs: dict, seed: int) -> float:
    """Test accuracy after the fine-tune protocol (a candidate's training first, unless the
    tool's weights already had it)."""
    from structsearch.train import evaluate, train
    model = copy.deepcopy(pruned.model)
    if not pruned.trained and specs["candidate"].epochs > 0:
        train(model, splits.train, specs["candidate"], seed=seed + 2)
    if specs["finetune"].epochs > 0:
        train(model, splits.train, specs["finetune"], seed=seed + 1)
    return evaluate(model, splits.test)["top1"]


def scratch_b(pruned: Pruned, splits, specs: dict, seed: int, factor: float,
              cap: float | None) -> tuple[float, int]:
    """(test accuracy, epochs) of Scratch-B: random init, baseline epochs x ``factor``."""
    import torch
    from structsearch.train import evaluate, train
    model = copy.deepcopy(pruned.model)
    torch.manual_seed(seed + 13)
    reset_parameters(model)
    factor = factor if cap is None else min(factor, cap)
    spec = dataclasses.replace(specs["scratch"], epochs=int(specs["scratch"].epochs * factor))
    train(model, splits.train, spec, seed=seed + 1)
    return evaluate(model, splits.test)["top1"], spec.epochs


def speed(baseline, pruned, input_shape, batch_size: int, quick: bool) -> dict:
    """Measured speed-up at ``batch_size``, one thread: torch, and onnxruntime when it runs."""
    import torch
    from structsearch.timing import speedup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runtimes = ("torch",) if quick else ("torch", "onnxruntime")
    kwargs = {"batch_size": batch_size, "repeats": 5 if quick else 30,
              "max_seconds": 0.5 if quick else 3.0}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result = speedup(copy.deepcopy(baseline), copy.deepcopy(pruned), input_shape,
                                 runtimes=runtimes, **kwargs)
            except Exception:  # noqa: BLE001 - an ONNX export a tool's module cannot make
                result = speedup(copy.deepcopy(baseline), copy.deepcopy(pruned), input_shape,
                                 runtimes=("torch",), **kwargs)
    finally:
        torch.set_num_threads(threads)
    at = {r["runtime"]: r["speedup"] for r in result["runs"] if r["batch_size"] == batch_size}
    return {"torch": at.get("torch"), "onnxruntime": at.get("onnxruntime")}


# ------------------------------------------------------------------------------ one seed
def load_seed(args, seed: int, root: Path):
    """The seed's config, splits and trained baseline (trained once, a plain state_dict file
    that every tool starts from)."""
    from structsearch import config as C
    from structsearch.commands import run_baseline
    from structsearch.preflight import build_model, load_data
    from structsearch.surgery import load_weights
    base_dir = root / f"baseline-{seed}"
    ckpt = base_dir / "baseline" / "weights.pt"
    if not ckpt.is_file():
        run_baseline(C.from_dict(config_dict(args, seed, None)), out=str(base_dir))
    cfg = C.from_dict(config_dict(args, seed, str(ckpt)))
    _, splits = load_data(cfg)
    baseline, _ = build_model(cfg, splits)
    load_weights(baseline, ckpt)
    return cfg, splits, baseline.eval()


def prune_with(tool: str, args, cfg, splits, baseline, target: float, out: Path) -> Pruned:
    if tool == "structsearch":
        return run_structsearch(cfg.to_dict(), out)
    if tool == "torch_pruning":
        return run_torch_pruning(baseline, splits.input_shape, target, splits.num_classes,
                                 cfg.space.min_ratio)
    return run_modelopt(baseline, splits, target, cfg.space.min_ratio, args.batch_size)


def measure(pruned: Pruned, baseline, splits, cfg, seed: int, base_macs: int, quick: bool) -> dict:
    """The row figures of one tool at one seed, every one by the same counter and protocol."""
    from structsearch.config import scratch_b_cap
    specs = recipes(cfg)
    macs, params = count(pruned.model, splits.input_shape)
    ft = finetuned(pruned, splits, specs, seed)
    sb, sb_epochs = scratch_b(pruned, splits, specs, seed, base_macs / macs,
                              scratch_b_cap(cfg))
    return {"macs": macs, "params": params, "macs_ratio": macs / base_macs,
            "widths": widths(pruned.model),
            "finetune_test_acc": ft, "scratch_b_test_acc": sb, "scratch_b_epochs": sb_epochs,
            "search_seconds": pruned.seconds, "subnets": pruned.subnets,
            "subnets_note": pruned.subnets_note,
            "speedup": speed(baseline, pruned.model, splits.input_shape, cfg.data.batch_size,
                             quick)}


def own_final_stage(out: Path, input_shape) -> dict:
    """structsearch's own final-stage results of its run (winner fine-tune, one-shot
    baselines), MACs by the same counter."""
    from structsearch.surgery import load_pruned
    summary = json.loads((out / "summary.json").read_text())
    own = {"winner fine-tune": {"test_acc": summary["finetune"]["test_acc"],
                                "macs": count(load_pruned(out / "winner"), input_shape)[0]}}
    for name, entry in (summary.get("oneshot") or {}).items():
        folder = out / "oneshot" / name.replace(":", "_").replace("@", "_")
        own[f"one-shot {name}"] = {"test_acc": entry["test_acc"],
                                   "macs": count(load_pruned(folder), input_shape)[0]}
    return own


def one_seed(args, seed: int, root: Path, tools: list[str]) -> dict:
    from structsearch.train import evaluate
    cfg, splits, baseline = load_seed(args, seed, root)
    base_macs, base_params = count(baseline, splits.input_shape)
    record = {"seed": seed, "baseline": {"macs": base_macs, "params": base_params,
                                         "test_acc": evaluate(baseline, splits.test)["top1"]},
              "target_macs": args.budget * base_macs, "tools": {}, "own_final_stage": {}}
    for tool in tools:
        out = root / f"{tool}-{seed}"
        pruned = prune_with(tool, args, cfg, splits, baseline, record["target_macs"], out)
        row = measure(pruned, baseline, splits, cfg, seed, base_macs, args.quick)
        record["tools"][tool] = row
        print(f"  seed {seed} {tool}: {100 * row['macs_ratio']:.1f}% MACs, fine-tuned "
              f"{100 * row['finetune_test_acc']:.2f}%, Scratch-B "
              f"{100 * row['scratch_b_test_acc']:.2f}%"
              f", {row['search_seconds']:.0f} s, {row['subnets']} {row['subnets_note']}",
              flush=True)
        if tool == "structsearch":
            record["own_final_stage"] = own_final_stage(out, splits.input_shape)
    return record


# ------------------------------------------------------------------------------ the table
def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for a single value)."""
    if len(values) < 2:
        return statistics.mean(values), None
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5


def pct(values: list[float]) -> str:
    mean, se = mean_se([100 * v for v in values])
    return f"{mean:.2f}" if se is None else f"{mean:.2f} +- {se:.2f}"


def subnets_text(rows: list[dict]) -> str:
    """"11 trained (...)", or "128 (mean) pruning steps, ..." when the seeds differ."""
    counts = [r["subnets"] for r in rows]
    mean = f"{statistics.mean(counts):.0f}" + (" (mean)" if len(set(counts)) > 1 else "")
    return f"{mean} {' / '.join(sorted({r['subnets_note'] for r in rows}))}"


def aggregate(records: list[dict], tool: str) -> dict:
    rows = [r["tools"][tool] for r in records if tool in r["tools"]]
    speeds = {k: [row["speedup"][k] for row in rows if row["speedup"].get(k)]
              for k in ("torch", "onnxruntime")}
    return {"tool": tool, "seeds": len(rows),
            "macs": statistics.mean(r["macs"] for r in rows),
            "max_macs_ratio": max(r["macs_ratio"] for r in rows),
            "macs_ratio": statistics.mean(r["macs_ratio"] for r in rows),
            "params": statistics.mean(r["params"] for r in rows),
            "finetune_test_acc": mean_se([r["finetune_test_acc"] for r in rows]),
            "scratch_b_test_acc": mean_se([r["scratch_b_test_acc"] for r in rows]),
            "finetune_text": pct([r["finetune_test_acc"] for r in rows]),
            "scratch_b_text": pct([r["scratch_b_test_acc"] for r in rows]),
            "scratch_b_epochs": statistics.mean(r["scratch_b_epochs"] for r in rows),
            "search_seconds": statistics.mean(r["search_seconds"] for r in rows),
            "subnets": statistics.mean(r["subnets"] for r in rows),
            "subnets_text": subnets_text(rows),
            "speedup": {k: statistics.mean(v) if v else None for k, v in speeds.items()}}


def table(records: list[dict], tools: list[str]) -> tuple[str, list[dict]]:
    """The markdown table (one row per tool, the baseline first) and its figures."""
    base = records[0]["baseline"]
    lines = ["| tool | MACs (M) | MACs % of baseline | params (k) | fine-tuned test % | "
             "Scratch-B test % (epochs) | search wall s | sub-networks trained / scored | "
             "speed-up torch | speed-up onnxruntime |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| baseline (unpruned) | {base['macs'] / 1e6:.2f} | 100 | "
                 f"{base['params'] / 1e3:.1f} | "
                 f"{pct([r['baseline']['test_acc'] for r in records])} | | | | 1.00x | 1.00x |")
    figures = []
    for tool in tools:
        a = aggregate(records, tool)
        figures.append(a)
        ort = a["speedup"]["onnxruntime"]
        lines.append(
            f"| {TITLES[tool]} | {a['macs'] / 1e6:.2f} | {100 * a['macs_ratio']:.1f} | "
            f"{a['params'] / 1e3:.1f} | {a['finetune_text']} | {a['scratch_b_text']} "
            f"({a['scratch_b_epochs']:.0f}) | {a['search_seconds']:.1f} | "
            f"{a['subnets_text']} | {a['speedup']['torch']:.2f}x | "
            f"{'n/a' if ort is None else f'{ort:.2f}x'} |")
    return "\n".join(lines), figures


def own_table(records: list[dict]) -> str | None:
    """structsearch's own final stage (its run's fine-tune and one-shot baselines)."""
    names = list(records[0].get("own_final_stage") or {})
    if not names:
        return None
    lines = ["| structsearch's own final stage | MACs % of baseline | fine-tuned test % |",
             "|---|---|---|"]
    for name in names:
        pairs = [(r["own_final_stage"][name], r["baseline"]["macs"]) for r in records
                 if name in r["own_final_stage"]]
        ratio = statistics.mean(e["macs"] / macs for e, macs in pairs)
        lines.append(f"| {name} | {100 * ratio:.1f} | {pct([e['test_acc'] for e, _ in pairs])} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def header(args, tools: list[str]) -> str:
    import torch
    import torch_pruning as tp
    versions = [f"torch {torch.__version__}", f"torch_pruning {tp.__version__}"]
    if "modelopt" in tools:
        import modelopt
        versions.append(f"modelopt {modelopt.__version__}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
            f"{', '.join(versions)}; commit {commit}; {time.strftime('%Y-%m-%d')}\n"
            f"# {args.model} on {args.data} at {100 * args.budget:g}% MACs; seeds "
            f"0..{args.seeds - 1}; baseline {args.baseline_epochs} epochs per seed; structsearch "
            f"{args.candidates} candidates x {args.search_epochs} epoch(s); fine-tune "
            f"{args.search_epochs} candidate epoch(s) + {args.finetune_epochs} epochs; counter: "
            f"fvcore conv+linear MACs, all parameters")


def main(argv=None) -> None:
    args = parse_args(argv)
    tools = available_tools(args.tools)
    import torch
    threads = torch.get_num_threads()
    # A Ray this process had already started (a caller's, a test session's) is left running.
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    torch.set_num_threads(1)  # a shared machine: one intra-op thread trains fastest and steadiest
    try:
        _main(args, tools)
    finally:
        torch.set_num_threads(threads)
        if "structsearch" in tools and not ray_before:
            import ray
            ray.shutdown()


def _main(args, tools) -> None:
    root = Path(args.out or tempfile.mkdtemp(prefix="structsearch-peers-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(header(args, tools), flush=True)
    records = [one_seed(args, seed, root, tools) for seed in range(args.seeds)]
    text, figures = table(records, tools)
    print()
    print(text)
    own = own_table(records)
    if own:
        print()
        print(own)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "tools": tools, "records": records, "table": figures,
             "markdown": text}, indent=2, default=str))


if __name__ == "__main__":
    main()
