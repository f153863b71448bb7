import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when Ray workers run beside the test process.
torch.set_num_threads(2)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every test that needs it."""
    from structsearch.tuning import init_ray
    import ray

    init_ray(None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny models: on a shared 2-core machine two
    threads waiting on each other are many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
