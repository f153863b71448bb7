from pathlib import Path

import pytest

from structsearch import config as C

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_loads_with_types():
    cfg = C.load(ROOT / "configs" / "demo.yaml")
    assert cfg.model.name == "small_cnn"
    assert cfg.budget.macs_ratio == 0.5
    assert cfg.search.resources.cpu == 1.0
    assert isinstance(cfg.final.scratch, tuple) and set(cfg.final.scratch) == {"E", "B"}


def test_overrides_parse_yaml_scalars():
    cfg = C.load(ROOT / "configs" / "demo.yaml",
                 ["search.searcher=uniform", "budget.macs_ratio=0.3", "space.ignore=[features.0]"])
    assert cfg.search.searcher == "uniform"
    assert cfg.budget.macs_ratio == pytest.approx(0.3)
    assert cfg.space.ignore == ("features.0",)


@pytest.mark.parametrize("data, fragment", [
    ({"budget": {"macs_ratio": 0.5}, "serch": {}}, "did you mean 'search'"),
    ({"budget": {"macs_ratio": 0.5}, "search": {"candidtes": 3}}, "search.candidtes"),
    ({"budget": {"macs_ratio": "half"}}, "budget.macs_ratio"),
    ({"budget": {"macs_ratio": 1.5}}, "(0, 1]"),
    ({"budget": {}}, "budget"),
    ({"budget": {"macs_ratio": 0.5}, "search": {"searcher": "abcd"}}, "did you mean 'abc'"),
    ({"budget": {"macs_ratio": 0.5}, "search": {"epochs": 0}}, "search.epochs"),
    ({"budget": {"macs_ratio": 0.5}, "data": {"val_fraction": 1.0}}, "data.val_fraction"),
    ({"budget": {"macs_ratio": 0.5}, "final": {"scratch": ["C"]}}, "final.scratch"),
    ({"budget": {"macs_ratio": 0.5}, "seed": True}, "seed"),
])
def test_bad_configs_name_the_key(data, fragment):
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(data)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("seed: 0\nbudget: {macs_ratio: 0.5\n")
    with pytest.raises(C.ConfigError, match="line"):
        C.load(f)


def test_dump_round_trip(tmp_path):
    cfg = C.load(ROOT / "configs" / "demo.yaml")
    C.dump(cfg, tmp_path / "c.yaml", extra={"versions": {"torch": "x"}})
    data = C.read_yaml(tmp_path / "c.yaml")
    data.pop("_resolved")
    assert C.from_dict(data) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = C.load(path)
    budgets = [k for k in ("macs_ratio", "macs", "params", "latency_ms")
               if getattr(cfg.budget, k) is not None]
    assert len(budgets) == 1, budgets
    assert C.from_dict(cfg.to_dict()) == cfg, "what a run directory records loads back the same"


def test_yaml_exponent_without_sign_is_a_float(tmp_path):
    # YAML 1.1 reads 62.7e6 as a string; the documented budget must still work.
    f = tmp_path / "c.yaml"
    f.write_text("budget: {macs: 62.7e6}\n")
    assert C.load(f).budget.macs == pytest.approx(62.7e6)
    assert C.load(ROOT / "configs" / "demo.yaml", ["budget.macs_ratio=null", "budget.macs=1.5e5"]).budget.macs == 1.5e5


def test_shared_storage_keys_and_uris(tmp_path):
    from types import SimpleNamespace

    from structsearch.rundir import tune_storage as storage_of

    def prepared(run_dir, storage):
        cfg = C.from_dict({"budget": {"macs_ratio": 0.5}, "search": {"storage_path": storage}})
        return SimpleNamespace(cfg=cfg, run_dir=run_dir)

    def tune_storage(p):
        return storage_of(p.cfg, p.run_dir)

    a = tune_storage(prepared(tmp_path / "a" / "run1", "s3://bucket/prefix/"))
    b = tune_storage(prepared(tmp_path / "b" / "run1", "s3://bucket/prefix/"))
    assert a.startswith("s3://bucket/prefix/run1-") and b.startswith("s3://bucket/prefix/run1-")
    assert a != b, "two runs with the same name must not share an experiment"
    local = tune_storage(prepared(tmp_path / "run1", str(tmp_path / "shared")))
    assert local.startswith(str(tmp_path / "shared" / "run1-"))
    assert tune_storage(prepared(tmp_path / "run1", None)) == str(tmp_path / "run1" / "tune")


@pytest.mark.parametrize("config,capped", [("cifar10_resnet56.yaml", False), ("cifar10_vgg16.yaml", False),
                                           ("imagenet_resnet50.yaml", True)])
def test_scratch_b_epochs_as_liu_et_al(config, capped):
    """Scratch-B trains int(epochs x baseline MACs / pruned MACs) epochs: uncapped on CIFAR (the
    paper and its official code), capped at 2x on ImageNet."""
    from structsearch.pipeline import final_runs
    cfg = C.load(ROOT / "configs" / config)
    epochs = cfg.baseline.epochs
    runs = {r["protocol"]: r for r in final_runs(cfg, {"macs": 1000}, {"macs": 300, "widths": [1]})}
    expected = int(epochs * (2.0 if capped else 1000 / 300))
    assert runs["scratch_b"]["epochs"] == expected
    assert runs["scratch_e"]["epochs"] == epochs
    assert (cfg.final.scratch_b_max_factor == 2) is capped


@pytest.mark.parametrize("data,epochs,finetune,cap", [
    ("cifar10", 160, 40, None), ("cifar10", 20, 5, None), ("mnist5k", 3, 1, None),
    ("imagenet", 90, 23, 2.0), ("imagefolder", 90, 23, None), ("cifar10", 10, 3, None)])
def test_unset_final_epochs_follow_liu_et_al(data, epochs, finetune, cap):
    """With final.finetune_epochs unset the fine-tune is the CIFAR recipe's 40 epochs scaled by
    the run's epoch budget (baseline.epochs / 160 rounded half up, at least 1; Scratch-E gets the baseline's
    own); with scratch_b_max_factor unset Scratch-B is capped at 2x on ImageNet only. Numbers
    given are used as they are."""
    from structsearch.pipeline import final_runs
    cfg = C.from_dict({"data": {"name": data}, "baseline": {"epochs": epochs},
                       "budget": {"macs_ratio": 0.3}})
    runs = {r["protocol"]: r for r in final_runs(cfg, {"macs": 1000}, {"macs": 100, "widths": [1]})}
    assert runs["finetune"]["epochs"] == finetune and runs["scratch_e"]["epochs"] == epochs
    assert runs["scratch_b"]["epochs"] == int(epochs * (cap or 10.0))
    assert C.scratch_b_cap(cfg) == cap
    given = C.from_dict({"data": {"name": data}, "baseline": {"epochs": epochs},
                         "budget": {"macs_ratio": 0.3},
                         "final": {"finetune_epochs": 7, "scratch_b_max_factor": 3}})
    runs = {r["protocol"]: r for r in final_runs(given, {"macs": 1000}, {"macs": 100, "widths": [1]})}
    assert runs["finetune"]["epochs"] == 7 and runs["scratch_b"]["epochs"] == int(epochs * 3.0)


def test_resume_compares_the_final_stage_as_resolved(tmp_path):
    """A run saved with the fine-tune's epochs and Scratch-B's cap spelled out (as every run was
    before they could be unset) resumes under a config that leaves them unset when they resolve
    to the same numbers, and is refused when they do not."""
    from structsearch.rundir import save_or_check_config
    base = {"data": {"name": "cifar10"}, "baseline": {"epochs": 160}, "budget": {"macs_ratio": 0.5}}
    C.dump(C.from_dict(dict(base, final={"finetune_epochs": 40})), tmp_path / "config.yaml")
    save_or_check_config(C.from_dict(base), tmp_path, {})  # 40 = 40 x 160 / 160: same run
    with pytest.raises(C.ConfigError, match="config differs"):
        save_or_check_config(C.from_dict(dict(base, baseline={"epochs": 80})), tmp_path, {})
    with pytest.raises(C.ConfigError, match="config differs"):
        save_or_check_config(C.from_dict(dict(base, final={"scratch_b_max_factor": 2})),
                             tmp_path, {})


def test_only_a_zero_epoch_finetune_is_measured_without_a_trial():
    """The final stage's runs that skip Ray: the winner's 0-epoch fine-tune, and nothing else
    (Scratch runs and the one-shot baselines always train)."""
    from structsearch.pipeline import final_runs
    from trainables.final import trains_nothing
    cfg = C.from_dict({"baseline": {"epochs": 3}, "budget": {"macs_ratio": 0.3},
                       "final": {"finetune_epochs": 0, "scratch": ["E", "B"]}})
    runs = {r["protocol"]: r for r in final_runs(cfg, {"macs": 1000}, {"macs": 300, "widths": [1]})}
    assert [p for p, r in runs.items() if trains_nothing(r)] == ["finetune"]
    assert not trains_nothing(dict(runs["finetune"], epochs=1))
    assert not trains_nothing(dict(runs["finetune"], source="oneshot"))


def test_sparsity_strengths_written_without_a_dot_are_numbers(tmp_path):
    # README's own example: YAML 1.1 reads 1e-4 (no dot) as a string.
    f = tmp_path / "c.yaml"
    f.write_text("budget: {macs_ratio: 0.5}\nbaseline: {sparsity: {kind: slimming, s: 1e-4}}\n")
    cfg = C.load(f)
    assert cfg.baseline.sparsity == {"kind": "slimming", "s": 1e-4}
    assert C.from_dict(cfg.to_dict()) == cfg
