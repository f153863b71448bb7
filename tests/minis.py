"""The small end-to-end search config the pipeline tests share (small_cnn on digits)."""
from __future__ import annotations

import copy

DIGITS_RUN = {
    "seed": 0,
    "model": {"name": "small_cnn"},
    "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.2},
    "baseline": {"epochs": 2, "lr": 0.05, "schedule": "cosine"},
    "budget": {"macs_ratio": 0.5},
    # Every width (the default, auto, rounds small_cnn's 32/64-channel groups to 8: a grid too
    # coarse for the many distinct candidates some tests count).
    "space": {"round_to": 1},
    # Re-evaluation off (it adds trials); tests/test_pipeline.py turns it on.
    "search": {"searcher": "random", "candidates": 4, "epochs": 1, "lr": 0.02, "concurrent": 2,
               "reevaluate": 0},
    # One-shot baselines off: each adds two final trials; tests/test_pipeline.py turns them on.
    "final": {"finetune_epochs": 0, "scratch": [], "baselines": []},
}


def digits_run(seed: int | None = None, **sections) -> dict:
    """``DIGITS_RUN`` with each keyword's keys updated inside its section; ``budget`` is
    replaced whole (budgets are exclusive)."""
    cfg = copy.deepcopy(DIGITS_RUN)
    if seed is not None:
        cfg["seed"] = seed
    for name, values in sections.items():
        if name == "budget":
            cfg["budget"] = dict(values)
        else:
            cfg[name].update(values)
    return cfg
