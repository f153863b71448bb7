"""Hosts a two-node Ray cluster on this machine for tests/test_cluster.py, in its own process
(so the test process's own Ray instance is not involved). Prints ``ADDRESS <gcs address>``,
then ``NODES <head id> <worker id>``; reads commands from stdin: ``kill-worker`` removes the
worker node (its processes are killed), ``quit`` shuts the cluster down."""
import sys

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=1)
def _where() -> str:
    return ray.get_runtime_context().get_node_id()


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    head = cluster.head_node
    # Registered is not yet schedulable: both nodes must each run a task before the test
    # starts a search, or its first trials can all land on the head.
    ray.init(address=cluster.address, log_to_driver=False)
    for node in (head, worker):
        pinned = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        assert ray.get(_where.options(scheduling_strategy=pinned).remote(), timeout=120) \
            == node.node_id
    ray.shutdown()
    print(f"ADDRESS {cluster.address}", flush=True)
    print(f"NODES {head.node_id[:12]} {worker.node_id[:12]}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "kill-worker":
            cluster.remove_node(worker, allow_graceful=False)
            print("KILLED", flush=True)
        elif command == "quit":
            break
    cluster.shutdown()


if __name__ == "__main__":
    main()
