"""Bring your own model and data: entry points in a config (CLI) and the Python API, each
through a mini search; the winner reloads and exports to ONNX (onnxruntime equals torch)."""
import json

import numpy as np
import pytest
import torch
import yaml

from structsearch import cli, entrypoints, load_pruned
from structsearch.config import ConfigError
from structsearch.train import TrainSpec, evaluate, train
from user_model import UserNet, digits_data

RUN = {
    "seed": 0,
    "baseline": {"epochs": 2, "lr": 0.05, "schedule": "cosine"},
    # No re-evaluation and no one-shot baselines: each adds trials, and tests/test_pipeline.py
    # covers both; these tests are about the user's model and data.
    "search": {"searcher": "random", "candidates": 3, "epochs": 1, "lr": 0.02, "concurrent": 2,
               "reevaluate": 0},
    "final": {"finetune_epochs": 1, "scratch": [], "baselines": []},
}


def onnx_matches_torch(model, onnx_file, input_shape) -> float:
    import onnxruntime as ort
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - expected).max())


def test_entry_points_in_a_config_run_a_search_and_the_winner_exports(tmp_path, ray_local, capsys):
    pytest.importorskip("onnxruntime")
    cfg = dict(RUN, model={"name": "user_model:build_net", "kwargs": {"width": 16}},
               data={"name": "user_model:digits_data", "kwargs": {"size": 16}, "batch_size": 64},
               budget={"macs_ratio": 0.5},
               # The winner as the search left it, measured without a final trial (the API
               # test below trains the user's model in one).
               final=dict(RUN["final"], finetune_epochs=0))
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert cli.main(["search", str(path), "--out", str(run)]) == 0
    rows = [r for r in (run / "candidates.csv").read_text().splitlines()[1:] if r]
    assert len(rows) == 3
    arch = json.loads((run / "winner" / "finetune" / "arch.json").read_text())
    assert arch["model"] == "user_model:build_net" and arch["model_kwargs"]["width"] == 16
    assert arch["input_shape"] == [1, 16, 16]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["winner"]["macs"] <= 0.5 * summary["baseline"]["macs"]
    model = load_pruned(run / "winner" / "finetune").eval()
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    capsys.readouterr()
    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "w.onnx")]) == 0
    assert onnx_matches_torch(model, tmp_path / "w.onnx", (1, 16, 16)) < 1e-4


def test_python_api_searches_a_trained_module_passed_by_value(tmp_path, ray_local):
    import structsearch

    class LocalNet(UserNet):  # defined here, so workers get it by value (cloudpickle)
        pass

    torch.manual_seed(0)
    train_set, test_set = digits_data(size=16)
    xs, ys = train_set.x, train_set.y
    model = LocalNet(width=12)
    from structsearch.userdata import splits_of, user_data
    from structsearch.data import DataSpec
    fit = splits_of(DataSpec(name="fit", val_fraction=0.0), user_data((xs, ys), (xs[:10], ys[:10])))
    train(model, fit.train, TrainSpec(epochs=4, lr=0.05, batch_size=32), seed=0)
    expected_test = evaluate(model, splits_of(DataSpec(name="t"), user_data(
        (xs, ys), test_set)).test)["top1"]
    result = structsearch.search(model, train=(xs, ys), test=test_set, budget=0.6,
                                 out=str(tmp_path / "api"), **RUN)
    assert result.baseline["epochs"] is None  # a trained module is the baseline, not retrained
    assert result.baseline["test_acc"] == pytest.approx(expected_test)
    assert result.baseline["test_acc"] > 0.8  # well above chance (10 classes)
    assert len(result.candidates) == 3 and set(result.candidates["status"]) == {"ok"}
    assert set(result.final) == {"finetune"}
    out = result.best.eval()(torch.zeros(4, 1, 16, 16))
    assert out.shape == (4, 10)
    assert result.summary["winner"]["macs"] <= 0.6 * result.summary["baseline"]["macs"] + 1
    # In another process the object is gone: one clear line, and model= rebuilds it.
    arch = json.loads((result.run_dir / "winner" / "arch.json").read_text())
    assert arch["model"].startswith("object:LocalNet-")
    entrypoints._OBJECTS["model"].clear()
    with pytest.raises(Exception, match="Python object of another process"):
        load_pruned(result.run_dir / "winner")
    again = load_pruned(result.run_dir / "winner", model=LocalNet(width=12))
    with torch.no_grad():
        x = torch.randn(2, 1, 16, 16)
        assert torch.allclose(again.eval()(x), result.winner.eval()(x), atol=1e-5)


def test_user_data_and_models_are_checked_before_ray(tmp_path):
    import structsearch
    x = torch.randn(20, 1, 16, 16)
    with pytest.raises(ConfigError, match="20 images but 19 labels"):
        structsearch.search(UserNet(), train=(x, torch.zeros(19, dtype=torch.long)),
                            out=str(tmp_path / "a"))
    bad = torch.full((20, 1, 16, 16), float("nan"))
    with pytest.raises(ConfigError, match="NaN"):
        structsearch.search(UserNet(), train=(bad, torch.zeros(20, dtype=torch.long)),
                            out=str(tmp_path / "b"))
    y = torch.arange(20) % 10
    with pytest.raises(ConfigError, match=r"returns \(2, 3\) for a batch of 2, expected \(batch, 10\)"):
        structsearch.search(UserNet(num_classes=3), train=(x, y), out=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.models'"):
        structsearch.search("no_such_pkg.models:net", train=(x, y), out=str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="unknown keyword 'serach'"):
        structsearch.search(UserNet(), train=(x, y), serach={"candidates": 2})


def test_readme_python_api_example_runs_as_written(tmp_path, ray_local, monkeypatch, capsys):
    """README's "Your own model and data" example (a factory defined in the script, so it
    travels by value), run as written from a scratch directory."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our README
    result = namespace["result"]
    assert result.run_dir == tmp_path / "runs" / "my-net"
    assert result.baseline["epochs"] == 10 and result.baseline["test_acc"] > 0.5
    # At most the 4 asked for: the default bee colony stops early, saying why, when the small
    # space within the budget has no new width vector.
    assert 2 <= len(result.candidates) <= 4 and set(result.final) == {"finetune"}
    assert len(result.candidates) == 4 or "stopped early" in capsys.readouterr().out
    assert result.summary["winner"]["macs_ratio"] <= 0.5
    assert result.best.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_own_image_folder_at_its_own_size_runs_a_search(tmp_path, ray_local):
    """A user's image folder (train/ and val/ class folders of small RGB pictures) searched at
    its own resolution (`data.image_size`), streamed by the folder loader inside the trials."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from structsearch.pipeline import run_search

    digits = load_digits()
    root = tmp_path / "parts"
    counts = {"train": 0, "val": 0}
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label > 2 or i >= 600:
            continue
        pool = "val" if i % 5 == 0 else "train"
        folder = root / pool / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        gray = (image * 255 / 16).astype(np.uint8)
        rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
        Image.fromarray(rgb).resize((20, 20)).save(folder / f"{i}.png")
        counts[pool] += 1
    cfg = dict(RUN, model={"name": "small_cnn"},
               data={"name": "imagefolder", "root": str(root), "image_size": 16, "workers": 0,
                     "batch_size": 32, "augment": False},
               baseline={"epochs": 4, "lr": 0.05, "schedule": "cosine"},
               budget={"macs_ratio": 0.5}, space={"round_to": 1},
               search=dict(RUN["search"], candidates=2),
               final=dict(RUN["final"], finetune_epochs=0))
    from structsearch import config as C
    run = run_search(C.from_dict(cfg), out=str(tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    arch = json.loads((run / "winner" / "finetune" / "arch.json").read_text())
    assert arch["input_shape"] == [3, 16, 16]
    assert summary["winner"]["macs"] <= 0.5 * summary["baseline"]["macs"]
    # 3 classes: chance is 1/3; the test split is the val/ folder.
    assert summary["baseline"]["test_acc"] > 0.6 and summary["finetune"]["test_acc"] > 0.6
    model = load_pruned(run / "winner" / "finetune").eval()
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    assert counts["val"] >= 30 and counts["train"] >= 4 * counts["val"] - 8


def test_image_size_is_refused_for_datasets_that_are_not_folders():
    from structsearch import config as C
    with pytest.raises(ConfigError, match=r"data.image_size: only image folders"):
        C.from_dict({"data": {"name": "mnist5k", "image_size": 32}})
    with pytest.raises(ConfigError, match=r"data.image_size: must be a crop side"):
        C.from_dict({"data": {"name": "imagefolder", "image_size": 2}})
    with pytest.raises(ConfigError, match=r"data.workers: must be >= 0"):
        C.from_dict({"data": {"name": "imagefolder", "workers": -1}})
