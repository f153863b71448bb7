"""Module boundaries: searchers and the numpy side of the space never import torch.

Each check runs in a fresh interpreter, since this test process has torch loaded already.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

NO_TORCH = ("import sys; assert 'torch' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('torch'))")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("modules", ["searchers", "structsearch.space, structsearch.ranking",
                                     "structsearch.cost", "structsearch", "optuna"])
def test_import_does_not_pull_torch(modules):
    result = run_python(f"import {modules}; {NO_TORCH}")
    assert result.returncode == 0, result.stderr


def test_space_queries_run_without_torch():
    """A WidthSpace built from numpy parts answers every query a searcher asks, torch-free."""
    code = textwrap.dedent("""
        import numpy as np
        import structsearch.ranking as ranking
        from structsearch.cost import Affine, CostModel
        from structsearch.space import Group, Member, WidthSpace, _grid

        widths = [8, 16]
        members = lambda name, w: (Member(name, "out", np.arange(w), np.arange(w)),)
        groups = [Group(f"conv{i}", w, members(f"conv{i}", w)) for i, w in enumerate(widths)]
        macs, params = CostModel(2), CostModel(2)
        one = Affine(1.0, np.zeros(2))
        g0, g1 = Affine(0.0, np.array([1.0, 0.0])), Affine(0.0, np.array([0.0, 1.0]))
        macs.add(9 * 64, g0, Affine(3.0, np.zeros(2)), "conv0")
        macs.add(9 * 64, g1, g0, "conv1")
        params.add(9, g0, one, "conv0")
        params.add(9, g1, g0, "conv1")
        space = WidthSpace(groups=groups, input_shape=(3, 8, 8), round_to=2, _macs=macs,
                           _params=params, _grids=[_grid(w, 0.25, 2) for w in widths])
        rng = np.random.default_rng(0)
        draws = space.sample(rng, 5, (0.2 * space.full_macs, 0.6 * space.full_macs))
        assert all(space.macs(space.validate(w)) <= 0.6 * space.full_macs for w in draws)
        assert space.macs(space.project(space.full_widths, 0.5 * space.full_macs)) <= 0.5 * space.full_macs
        assert 0 < space.max_uniform_ratio(0.5 * space.full_macs) < 1
        space.table(space.uniform(0.5))
        keep = ranking.criterion_keep([rng.random(w) for w in widths], space.uniform(0.5))
        assert [len(k) for k in keep.values()] == list(space.uniform(0.5))
        ranking.walk_chains(rng, [np.full(2, 0.5)] * 2, [np.array([2, 4, 8]), np.array([4, 8, 16])], 3)
    """) + NO_TORCH
    result = run_python(code)
    assert result.returncode == 0, result.stderr


# Where a searcher's name is also another registry's word (a criterion, a seed proposal): the
# string means that, not the searcher. Everything else outside searchers/ must not name one.
_OTHER_VOCABULARY = {
    ("structsearch/needs.py", "random"): "the random criterion gets the run's seed",
    ("structsearch/needs.py", "uniform"): "the uniform seed proposal",
    ("structsearch/seeds.py", "uniform"): "the uniform seed proposal",
    ("structsearch/config.py", "uniform"): "final.baselines' default: the uniform seed proposal",
    ("structsearch/criteria/__init__.py", "random"): "the random criterion's registry name",
    ("structsearch/criteria/random.py", "random"): "the random criterion's name",
}


def _string_literals(path):
    """(line, text) of every string constant in ``path`` except docstrings."""
    import ast
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_searcher_name_outside_searchers():
    """The registry is the one list of searcher names: structsearch/ and trainables/ read it
    (and the searchers' declarations), never a name."""
    import re

    import searchers
    names = searchers.names()
    found = []
    for folder in ("structsearch", "trainables"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for line, text in _string_literals(path):
                for name in names:
                    # The whole string, a composite part, or a quoted-word prefix ("abc:...").
                    if re.search(rf"(^|[+\s'\"]){re.escape(name)}($|[+:\s'\"])", text) \
                            and (rel, name) not in _OTHER_VOCABULARY:
                        found.append(f"{rel}:{line}: {text!r}")
    assert not found, "searcher names outside searchers/:\n" + "\n".join(found)


def _python_files(*folders):
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_every_tune_experiment_starts_through_one_helper():
    """``tune.Tuner`` appears once: in structsearch.tuning.run_experiment."""
    users = [str(p.relative_to(ROOT)) for p in _python_files("structsearch", "searchers", "trainables")
             if "Tuner(" in p.read_text()]
    assert users == ["structsearch/tuning.py"], users


def test_functions_fit_on_a_screen_and_the_pipeline_is_a_flow():
    """No function in the packages is over 60 lines; pipeline.py is at most 400 lines."""
    import ast
    long = []
    for path in _python_files("structsearch", "searchers", "trainables"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long
    assert len((ROOT / "structsearch" / "pipeline.py").read_text().splitlines()) <= 400
