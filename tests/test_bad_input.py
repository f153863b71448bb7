"""Malformed configs and files through the real CLI, in a subprocess: exit code 2, one line on
stderr naming the problem, no traceback, and Ray never imported (so never started)."""
import copy
import subprocess
import sys

import pytest
import torch
import yaml

BASE = {
    "seed": 0,
    "model": {"name": "small_cnn"},
    "data": {"name": "digits", "val_fraction": 0.2, "batch_size": 64},
    "baseline": {"epochs": 1, "lr": 0.05},
    "budget": {"macs_ratio": 0.5},
    "search": {"searcher": "random", "candidates": 2, "epochs": 1},
}

PROBE = ("import sys; from structsearch.cli import main; rc = main(sys.argv[1:]); "
         "print('RAY_IMPORTED' if 'ray' in sys.modules else 'RAY_ABSENT'); sys.exit(rc)")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def patched(**sections):
    cfg = copy.deepcopy(BASE)
    for dotted, value in sections.items():
        node = cfg
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return cfg


DELETE = object()

# (case id, config mapping, extra CLI args, words the message must contain)
CASES = [
    ("unknown-top-key", patched(serch={}), [], ["serch", "did you mean"]),
    ("unknown-nested-key", patched(search__candidtes=3), [], ["search.candidtes", "candidates"]),
    ("wrong-type-int", patched(search__candidates="many"), [], ["search.candidates", "int"]),
    ("bool-for-int", patched(seed=True), [], ["seed"]),
    ("wrong-type-section", patched(model="small_cnn"), [], ["model", "mapping"]),
    ("budget-missing", patched(budget=DELETE), [], ["budget"]),
    ("budget-two-keys", patched(budget={"macs_ratio": 0.5, "macs": 1e6}), [], ["budget", "only one"]),
    ("ratio-above-one", patched(budget={"macs_ratio": 1.5}), [], ["budget.macs_ratio"]),
    ("ratio-zero", patched(budget={"macs_ratio": 0}), [], ["budget.macs_ratio"]),
    ("budget-above-baseline", patched(budget={"macs": 1e12}), [], ["budget.macs", "above"]),
    ("budget-below-floor", patched(budget={"macs_ratio": 0.001}), [], ["smallest", "min_ratio"]),
    ("params-below-floor", patched(budget={"params": 100}), [], ["budget.params", "smallest"]),
    ("params-above-baseline", patched(budget={"params": 1e9}), [], ["budget.params", "nothing to prune"]),
    ("params-and-macs", patched(budget={"params": 2e4, "macs_ratio": 0.5}), [], ["budget", "only one"]),
    ("asha-with-dropnet", patched(search__searcher="dropnet", search__scheduler="asha"), [],
     ["search.scheduler", "dropnet"]),
    ("params-with-dmcp", patched(budget={"params": 2e4}, search__searcher="dmcp"), [], ["budget.params", "dmcp"]),
    ("unknown-model", patched(model={"name": "resnet9000"}), [], ["model.name", "resnet9000"]),
    ("bad-model-kwarg", patched(model={"name": "small_cnn", "kwargs": {"depthh": 3}}), [], ["model.kwargs"]),
    ("class-mismatch", patched(model={"name": "small_cnn", "num_classes": 7}), [], ["num_classes"]),
    ("unknown-dataset", patched(data={"name": "svhn"}), [], ["data.name", "svhn"]),
    ("missing-cifar", patched(data={"name": "cifar10", "root": "/nonexistent/cifar"}), [], ["/nonexistent/cifar", "download"]),
    ("unknown-criterion", patched(search__criterion="l3"), [], ["search.criterion", "l1"]),
    ("unknown-searcher", patched(search__searcher="genetic"), [], ["search.searcher", "genetic"]),
    ("unknown-searcher-part", patched(search__searcher="random+bees"), [], ["search.searcher"]),
    ("val-fraction", patched(data__val_fraction=1.5), [], ["data.val_fraction"]),
    ("batch-size", patched(data__batch_size=0), [], ["data.batch_size"]),
    ("round-to", patched(space={"round_to": 0}), [], ["space.round_to"]),
    ("min-ratio", patched(space={"min_ratio": 0}), [], ["space.min_ratio"]),
    ("ignore-everything", patched(space={"ignore": ["*"]}), [], ["no searchable"]),
    ("concurrent", patched(search__concurrent=0), [], ["search.concurrent"]),
    ("scratch-kind", patched(final={"scratch": ["C"]}), [], ["final.scratch"]),
    ("schedule", patched(baseline__schedule="linear"), [], ["baseline.schedule", "cosine"]),
    ("too-many-gpus", patched(search__resources={"cpu": 1, "gpu": 64}), [], ["search.resources.gpu"]),
    ("too-many-cpus", patched(search__resources={"cpu": 4096, "gpu": 0}), [], ["search.resources.cpu"]),
    ("fault-key", patched(search__fault_injection={"explode": 0.5}), [], ["fault_injection"]),
    ("params-section", patched(search__params={"bees": {}}), [], ["search.params.bees"]),
    ("widths-wrong-length", patched(search__searcher="seeded", search__params={"seeded": {
        "proposals": [{"origin": "mine", "widths": [8, 8]}]}}), [], ["proposals[0]", "4 groups"]),
    ("widths-out-of-bounds", patched(search__searcher="seeded", search__params={"seeded": {
        "proposals": [{"origin": "mine", "widths": [32, 32, 64, 999]}]}}), [], ["proposals[0]", "outside"]),
    ("widths-off-grid", patched(space={"round_to": 8}, search__searcher="seeded", search__params={"seeded": {
        "proposals": [{"origin": "mine", "widths": [8, 8, 13, 16]}]}}), [], ["not on the grid"]),
    ("unknown-seed", patched(search__searcher="seeded", search__seeds=["magic"]), [], ["search.seeds", "magic"]),
    ("bad-abc-param", patched(search__searcher="abc", search__abc={"food_number": 1}), [], ["search.params.abc", "food_number"]),
    ("bad-fitness", patched(search__fitness="oracle"), [], ["search.fitness"]),
    ("latency-with-dmcp", patched(budget={"latency_ms": 5.0}, search__searcher="dmcp"), [], ["budget.latency_ms", "dmcp"]),
    ("latency-too-small", patched(budget={"latency_ms": 1e-6}), [], ["budget.latency_ms", "smallest"]),
    ("latency-and-ratio", patched(budget={"latency_ms": 5.0, "macs_ratio": 0.5}), [], ["only one"]),
    ("set-without-equals", BASE, ["--set", "seed"], ["--set", "key=value"]),
    ("set-into-scalar", BASE, ["--set", "seed.x=1"], ["seed", "not a section"]),
    ("set-bad-value", BASE, ["--set", "search.epochs=two"], ["search.epochs"]),
    # Non-finite numbers: every comparison with nan is False, so no range check would see one.
    ("budget-nan", patched(budget={"macs": float("nan")}), [], ["budget.macs", "finite", "nan"]),
    ("ratio-nan", patched(budget={"macs_ratio": float("nan")}), [], ["budget.macs_ratio", "finite"]),
    ("lr-inf-by-set", BASE, ["--set", "search.lr=inf"], ["search.lr", "finite"]),
    ("cpu-nan", patched(search__resources={"cpu": float("nan"), "gpu": 0}), [],
     ["search.resources.cpu", "finite"]),
    ("scratch-factor-nan", patched(final={"scratch_b_max_factor": float("nan")}), [],
     ["final.scratch_b_max_factor", "finite"]),
    ("trace-timeout-nan", patched(space={"trace_timeout_s": float("nan")}), [],
     ["space.trace_timeout_s", "finite"]),
    ("abc-param-nan", patched(search__searcher="abc", search__abc={"limit": float("nan")}), [],
     ["search.abc.limit", "finite"]),
    ("model-kwarg-inf", patched(model={"name": "small_cnn", "kwargs": {"width_mult": float("inf")}}),
     [], ["model.kwargs.width_mult", "finite"]),
    # Optimiser settings: our SGD skips torch's checks, so a negative lr would climb the loss.
    ("baseline-lr-negative", patched(baseline__lr=-0.1), [], ["baseline.lr", "> 0"]),
    ("finetune-lr-zero", patched(final={"finetune_lr": 0}), [], ["final.finetune_lr", "> 0"]),
    ("momentum-one", patched(baseline__momentum=1.0), [], ["baseline.momentum", "[0, 1)"]),
    ("nesterov-without-momentum", patched(baseline__nesterov=True, baseline__momentum=0.0), [],
     ["baseline.nesterov", "momentum"]),
    ("weight-decay-negative", patched(baseline__weight_decay=-1e-4), [], ["baseline.weight_decay"]),
    ("seed-negative", patched(seed=-1), [], ["seed", ">= 0"]),
    ("num-classes-zero", patched(model={"name": "small_cnn", "num_classes": 0}), [],
     ["model.num_classes", ">= 1"]),
    ("ignore-not-names", patched(space={"ignore": [5]}), [], ["space.ignore", "strings"]),
    ("sparsity-kind-list", patched(baseline__sparsity={"kind": ["slimming"]}), [],
     ["baseline.sparsity.kind", "slimming"]),
    ("sparsity-s-text", patched(baseline__sparsity={"kind": "slimming", "s": "big"}), [],
     ["baseline.sparsity.s", "finite"]),
    ("sparsity-epochs-negative", patched(baseline__sparsity={"kind": "group_lasso", "epochs": -1}),
     [], ["baseline.sparsity.epochs", ">= 0"]),
]


# The config cases run in one subprocess (one interpreter start and torch import instead of
# one per case), each through ``main`` with its own captured stderr; whether Ray was imported is
# recorded after every case, so the first case that imports it is the one that fails.
DRIVER = """
import contextlib, io, json, sys, traceback
from structsearch.cli import main
cases = json.load(open(sys.argv[1]))
results = {}
for case, args in cases.items():
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(args)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 99
    results[case] = {"returncode": rc, "stderr": err.getvalue(), "stdout": out.getvalue() +
                     ("RAY_IMPORTED" if "ray" in sys.modules else "RAY_ABSENT")}
json.dump(results, open(sys.argv[2], "w"))
"""


class Result:
    def __init__(self, returncode, stderr, stdout):
        self.returncode, self.stderr, self.stdout = returncode, stderr, stdout


def run_batch(root, args: dict) -> dict:
    """Each case's CLI arguments (``args[case]``) through DRIVER in one subprocess."""
    import json
    (root / "cases.json").write_text(json.dumps({k: [str(a) for a in v] for k, v in args.items()}))
    done = subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json"),
                           str(root / "results.json")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {case: Result(**r) for case, r in json.loads((root / "results.json").read_text()).items()}


@pytest.fixture(scope="module")
def config_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-configs")
    args = {}
    for case, cfg, extra, _ in CASES:
        path = root / f"{case}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        args[case] = ["search", path, "--out", root / f"{case}-run", *extra]
    return root, run_batch(root, args)


@pytest.mark.parametrize("case, cfg, extra, words", CASES, ids=[c[0] for c in CASES])
def test_bad_config(config_cases, case, cfg, extra, words):
    root, results = config_cases
    assert_clean_failure(results[case], words)
    assert not (root / f"{case}-run").exists(), "bad input must not create the run directory"


def test_one_config_case_in_its_own_process(tmp_path):
    """The batched cases above share one interpreter; one case runs alone as well."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(patched(budget={"macs_ratio": 1.5})))
    res = cli("search", path, "--out", tmp_path / "run")
    assert_clean_failure(res, ["budget.macs_ratio"])
    assert not (tmp_path / "run").exists()


def assert_clean_failure(res, words):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("structsearch: error: ")
    assert "Traceback" not in res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "RAY_ABSENT" in res.stdout


# Bad files: each scenario writes its files into its own folder and returns the CLI arguments,
# the words the one line must hold and an optional check of what is left on disk afterwards.
# They run in one subprocess too (see DRIVER).
FILE_CASES = {}


def scenario(fn):
    FILE_CASES[fn.__name__] = fn
    return fn


def config_file(d, cfg=None):
    path = d / "c.yaml"
    path.write_text(yaml.safe_dump(cfg or BASE))
    return path


@scenario
def missing_config_file(d):
    return ["search", d / "nope.yaml"], ["not found", "nope.yaml"], None


@scenario
def malformed_yaml(d):
    path = d / "c.yaml"
    path.write_text("seed: 0\nbudget: {macs_ratio: 0.5\n")
    return ["search", path], ["malformed YAML", "line"], None


@scenario
def yaml_top_level_list(d):
    path = d / "c.yaml"
    path.write_text("- 1\n- 2\n")
    return ["search", path], ["top level"], None


@scenario
def yaml_python_tag_refused(d):
    path = d / "c.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    return ["search", path], ["YAML"], None


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def checkpoint_case(d, kind):
    ckpt = d / "base.pt"
    if kind == "pickled-code":
        torch.save({"w": Payload()}, ckpt)
        words = ["pickled code"]
    elif kind == "truncated":
        from structsearch import models
        torch.save(models.build("small_cnn", num_classes=10, in_channels=1).state_dict(), ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
        words = ["truncated or corrupt"]
    elif kind == "wrong-shapes":
        from structsearch import models
        torch.save(models.build("small_cnn", num_classes=10, in_channels=3).state_dict(), ckpt)
        words = ["does not match", "shape"]
    else:
        words = ["model.checkpoint", "not found"]
    path = config_file(d, patched(model={"name": "small_cnn", "checkpoint": str(ckpt)}))

    def check(d, res):
        assert "code ran" not in res.stdout
    return ["search", path, "--out", d / "run"], words, check


for _kind in ["pickled-code", "truncated", "wrong-shapes", "missing"]:
    FILE_CASES[f"checkpoint-{_kind}"] = lambda d, kind=_kind: checkpoint_case(d, kind)


@scenario
def cifar_batch_with_code(d):
    """A CIFAR folder whose first batch would run code when unpickled: refused, never run."""
    import pickle
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
    path = config_file(d, patched(data={"name": "cifar10", "root": str(d / "cifar")}))

    def check(d, res):
        assert "code ran" not in res.stdout
    return ["search", path, "--out", d / "run"], ["data_batch_1", "refused", "download"], check


@scenario
def non_empty_run_dir_refused(d):
    out = d / "run"
    out.mkdir()
    (out / "candidates.csv").write_text("precious finished work\n")

    def check(d, res):
        assert (d / "run" / "candidates.csv").read_text() == "precious finished work\n"
    return ["search", config_file(d), "--out", out], ["not empty", "--resume"], check


@scenario
def resume_missing_dir(d):
    return ["search", config_file(d), "--out", d / "nothing", "--resume"], ["does not exist"], None


@scenario
def resume_with_corrupt_journal(d):
    journal = d / "run" / "tune" / "search_journal.json"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"{torn")

    def check(d, res):
        assert journal.read_bytes() == b"{torn", "the file is left for the user to inspect"
    return (["search", config_file(d), "--out", d / "run", "--resume"],
            ["search_journal.json", "unreadable", "delete it"], check)


@scenario
def resume_refuses_a_planted_pickle_journal(d):
    """A journal that would run code if unpickled: --resume refuses it in one line, before
    Ray starts, and the code never runs."""
    from planted import planted_journal
    planted = d / "run" / "tune" / "search_journal.pkl"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(planted_journal(d / "code-ran"))

    def check(d, res):
        assert not (d / "code-ran").exists(), "resume must not unpickle the planted journal"
    return (["search", config_file(d), "--out", d / "run", "--resume"],
            ["search_journal.pkl", "pickled", "never unpickles", "delete it"], check)


@scenario
def resume_of_trials_without_journal_refused(d):
    """Trials but no journal (a run of an older structsearch): refused, nothing deleted."""
    trial = d / "run" / "tune" / "search" / "candidate_0a1b2c3d"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text("{}\n")

    def check(d, res):
        assert (trial / "result.json").is_file()
    return (["search", config_file(d), "--out", d / "run", "--resume"],
            ["no search journal", "new run directory"], check)


@scenario
def ray_client_address_refused(d):
    return (["search", config_file(d), "--out", d / "run", "--address", "ray://head:10001"],
            ["ray://", "not supported", "--address auto"], None)


@scenario
def report_without_summary(d):
    return ["report", d], ["summary.json"], None


@scenario
def export_without_winner(d):
    return ["export", d], ["arch.json"], None


@scenario
def inspect_unknown_model(d):
    return ["inspect", "resnet9000"], ["resnet9000"], None


@pytest.fixture(scope="module")
def file_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-files")
    args, expected = {}, {}
    for name, build in FILE_CASES.items():
        d = root / name
        d.mkdir()
        args[name], words, check = build(d)
        expected[name] = (d, words, check)
    args["debug-traceback"] = ["--debug", "search", root / "nope.yaml"]
    return run_batch(root, args), expected


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_bad_file(file_cases, name):
    results, expected = file_cases
    d, words, check = expected[name]
    assert_clean_failure(results[name], words)
    if check:
        check(d, results[name])


def test_debug_flag_shows_traceback(file_cases):
    res = file_cases[0]["debug-traceback"]
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_cluster_without_a_node_for_one_trial(capsys, monkeypatch):
    """--address: a trial's search.resources must fit on one alive node; two nodes of 2 CPUs
    do not make one 4-CPU trial, and a GPU trial needs a node with a GPU. An autoscaling
    cluster only gets a note (the autoscaler may add the node)."""
    from structsearch import config as C
    from structsearch.preflight import check_cluster
    monkeypatch.delenv("STRUCTSEARCH_WAIT_FOR_NODES", raising=False)
    cfg = C.from_dict({"budget": {"macs_ratio": 0.5}, "search": {"resources": {"cpu": 4, "gpu": 0}}})
    nodes = [{"CPU": 2.0}, {"CPU": 2.0, "GPU": 0.0}]
    with pytest.raises(C.ConfigError) as exc:
        check_cluster(cfg, "10.0.0.1:6379", nodes, autoscaling=False)
    line = str(exc.value)
    assert "\n" not in line and "search.resources: 4 CPU and 0 GPU" in line
    assert "10.0.0.1:6379" in line and "2 CPU/0 GPU, 2 CPU/0 GPU" in line
    check_cluster(cfg, "auto", nodes + [{"CPU": 8.0}], autoscaling=False)  # one node fits
    gpu = C.from_dict({"budget": {"macs_ratio": 0.5}, "search": {"resources": {"cpu": 1, "gpu": 1}}})
    with pytest.raises(C.ConfigError, match="1 CPU and 1 GPU"):
        check_cluster(gpu, "auto", [{"CPU": 16.0}, {"GPU": 1.0, "CPU": 0.0}], autoscaling=False)
    check_cluster(gpu, "auto", [{"CPU": 16.0}, {"GPU": 2.0, "CPU": 4.0}], autoscaling=False)
    quarter = C.from_dict({"budget": {"macs_ratio": 0.5},
                           "search": {"resources": {"cpu": 1, "gpu": 0.25}}})
    check_cluster(quarter, "auto", [{"CPU": 4.0, "GPU": 1.0}], autoscaling=False)
    with pytest.raises(C.ConfigError, match="0 CPU/1 GPU"):  # a node without a CPU key
        check_cluster(quarter, "auto", [{"GPU": 1.0}], autoscaling=False)
    capsys.readouterr()
    check_cluster(gpu, "auto", [{"CPU": 16.0}], autoscaling=True)
    assert "waits until the autoscaler adds one" in capsys.readouterr().out
    with pytest.raises(C.ConfigError, match="STRUCTSEARCH_WAIT_FOR_NODES=1"):
        check_cluster(gpu, "auto", [{"CPU": 16.0}], autoscaling=False)
    monkeypatch.setenv("STRUCTSEARCH_WAIT_FOR_NODES", "1")  # autoscaling Ray does not show
    check_cluster(gpu, "auto", [{"CPU": 16.0}], autoscaling=False)
    assert "waits until the autoscaler adds one" in capsys.readouterr().out


def test_cluster_nodes_reads_alive_nodes_only(monkeypatch):
    """cluster_nodes() takes each alive node's resources from ray.nodes() (dead ones, or one
    without a Resources entry, hold nothing)."""
    import ray
    from structsearch.tuning import cluster_nodes
    monkeypatch.setattr(ray, "nodes", lambda: [
        {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0}},
        {"Alive": True, "Resources": None}])
    nodes, _ = cluster_nodes()
    assert nodes == [{"CPU": 4.0, "GPU": 1.0}, {}]
