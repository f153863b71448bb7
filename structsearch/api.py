"""The Python way in: ``structsearch.search(model, train=..., budget=...)`` on your own model and
data, through the same pipeline (Ray Tune trials, run directory, report) as the command line."""
from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import config as config_mod
from . import entrypoints
from .config import Config, ConfigError

SECTIONS = tuple(f.name for f in Config.__dataclass_fields__.values())


@dataclass
class SearchResult:
    """What a search returns: the pruned models as modules, and the run's records."""

    run_dir: Path
    summary: dict
    candidates: Any  # pandas.DataFrame of candidates.csv
    winner: nn.Module  # the search winner with its candidate-training weights
    final: dict[str, nn.Module] = field(default_factory=dict)  # finetune, scratch_e, scratch_b
    baseline: dict = field(default_factory=dict)  # the baseline's metrics

    @property
    def best(self) -> nn.Module:
        """The fine-tuned winner when the final stage ran it, else the search winner."""
        return self.final.get("finetune", self.winner)


def _payload(obj, what: str) -> bytes:
    """``obj`` serialised as Ray will send it to workers (cloudpickle), or one clear error."""
    import cloudpickle
    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - whatever cloudpickle cannot handle
        raise ConfigError(f"{what} cannot be sent to Ray workers ({type(exc).__name__}: "
                          f"{str(exc)[:120]}); define it in an importable module and pass "
                          f"model.name / data.name as package.module:factory") from None


def _saved_state(model: nn.Module) -> str:
    """A trained module's weights as a content-addressed state_dict file (model.checkpoint): the
    same module resumes against the same file."""
    from .data import cache_dir
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    blob = buffer.getvalue()
    path = cache_dir() / "inputs" / f"{hashlib.sha1(blob).hexdigest()[:16]}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return str(path)


def model_section(model: nn.Module | Callable[[], nn.Module] | str) -> dict:
    """``model.name`` (and ``model.checkpoint`` for a trained module): a registry name or entry
    point as given; an importable factory by reference; anything else by value."""
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, nn.Module):
        shipped = copy.deepcopy(model).cpu()
        name = entrypoints.register_object("model", shipped, _payload(shipped, "the model"))
        return {"name": name, "checkpoint": _saved_state(shipped)}
    if callable(model):
        ref = entrypoints.importable_name(model)
        if ref is not None:
            return {"name": ref}
        built = model()
        if not isinstance(built, nn.Module):
            raise ConfigError(f"model: the factory returned {type(built).__name__}, not an "
                              f"nn.Module")
        return {"name": entrypoints.register_object("model", built, _payload(built, "the model"))}
    raise ConfigError(f"model: expected an nn.Module, a zero-argument factory or a model name, "
                      f"got {type(model).__name__}")


def data_section(train, test, val, num_classes) -> dict:
    """``data.name`` for the splits: an entry point as given, else registered by value."""
    if isinstance(train, str):
        if test is not None or val is not None:
            raise ConfigError("train names a dataset (or entry point); then test and val come "
                              "from it and must not be given")
        return {"name": train}
    from .userdata import user_data
    held = user_data(train, test, val, num_classes)
    return {"name": entrypoints.register_object("data", held, _payload(held, "the data"))}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _base_config(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, dict):
        return copy.deepcopy(config)
    data = config_mod.read_yaml(Path(config).expanduser())
    return {k: v for k, v in data.items() if k != "_resolved"}


def _budget(budget) -> dict:
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return {"macs_ratio": float(budget)}
    if isinstance(budget, dict):
        return dict(budget)
    raise ConfigError(f"budget: expected a MACs ratio such as 0.5 or a mapping such as "
                      f"{{'params': 4e5}}, got {type(budget).__name__}")


def search(model, *, train, test=None, val=None, budget=0.5, config=None, out=None,
           num_classes: int | None = None, resume: bool = False, address: str | None = None,
           warm_from=(), **sections) -> SearchResult:
    """Search the channel widths of ``model`` on your data under ``budget``.

    ``model``: a trained ``nn.Module`` (its weights are the baseline: not retrained), a
    zero-argument factory (its model is trained as the baseline per ``baseline.*``), or a model
    name / ``package.module:factory``. ``train`` / ``test`` / ``val``: torch Datasets of
    ``(image, label)`` or ``(images, labels)`` tensors (see :mod:`structsearch.userdata`), or
    ``train`` a dataset name / entry point. ``budget``: a MACs ratio or a ``budget`` mapping.
    ``config``: a YAML path, a mapping or a :class:`Config` to start from; ``sections`` update
    it by section, e.g. ``search={"candidates": 40}, final={"finetune_epochs": 5}``.
    ``warm_from``: finished run directories (one path or several) whose evaluated candidates
    answer this search without training them again (the CLI's ``--from``; their settings must
    match this run's except the budget and the search's own knobs).
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"search(): unknown keyword {sorted(unknown)[0]!r}; config sections "
                          f"are {', '.join(SECTIONS)}")
    given = {"model": model_section(model), "data": data_section(train, test, val, num_classes),
             "budget": _budget(budget)}
    base = _base_config(config)
    base.pop("budget", None)  # budgets are exclusive: the one given here replaces the file's
    merged = _merge(_merge(base, sections), given)
    if not isinstance(model, str) and "checkpoint" not in given["model"]:
        merged["model"].pop("checkpoint", None)  # a factory's model is trained here
    cfg = config_mod.from_dict(merged)
    from .pipeline import run_search
    sources = [warm_from] if isinstance(warm_from, (str, Path)) else list(warm_from)
    run_dir = run_search(cfg, out=out, resume=resume, address=address,
                         warm_from=[str(s) for s in sources])
    return load_result(run_dir)


def load_result(run_dir, model=None) -> SearchResult:
    """A finished run directory as a :class:`SearchResult` (``model``: the unpruned model or its
    factory, needed when the run's model was a Python object of another process)."""
    import pandas as pd
    from .surgery import load_pruned
    run_dir = Path(run_dir)
    winner_dir = run_dir / "winner"
    final = {k: load_pruned(winner_dir / k, model=model) for k in ("finetune", "scratch_e",
                                                                   "scratch_b")
             if (winner_dir / k / "arch.json").is_file()}
    return SearchResult(run_dir=run_dir, summary=json.loads((run_dir / "summary.json").read_text()),
                        candidates=pd.read_csv(run_dir / "candidates.csv"),
                        winner=load_pruned(winner_dir, model=model), final=final,
                        baseline=json.loads((run_dir / "baseline" / "metrics.json").read_text()))
