"""Load a benchmark script (benchmarks/NAME.py, not a package) as a module, for tests that call
its ``main(argv)`` in the test process. It is imported under its own name with benchmarks/ on
sys.path, as the scripts import each other (headroom.py imports search_quality.py) and as a
spawned worker process finds the functions a script hands it."""
import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    return importlib.import_module(name)
