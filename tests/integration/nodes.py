"""Worker nodes on one machine: each its own raylet (with its object store, agents and workers) joined to the
session's head on 127.0.0.1, as `ray.cluster_utils.Cluster.add_node` starts them, and removed the way a lost
machine goes: every process of the node killed at once."""

from __future__ import annotations

import time
from typing import Any

HEAD = "127.0.0.1:6379"


class LocalNodes:
    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {}  # name -> ray._private.node.Node

    def add(self, name: str, num_cpus: int, resources: dict[str, float]) -> str:
        """Start a node advertising `resources` (and one unit of `name`); returns its Ray node id."""
        from ray._private.node import Node
        from ray._private.parameter import RayParams

        params = RayParams(
            gcs_address=HEAD,
            node_ip_address="127.0.0.1",
            num_cpus=num_cpus,
            num_gpus=0,
            resources=resources | {name: 1.0},
            object_store_memory=150 * 2**20,
            min_worker_port=0,
            max_worker_port=0,
            node_manager_port=0,
            include_log_monitor=False,  # the head's monitor reads this machine's logs already
        )
        params.dashboard_agent_listen_port = None  # any free port: the head's agent has the default one
        node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
        self.nodes[name] = node
        self._wait(lambda: node_alive(node.node_id), f"node {name} to join")
        return str(node.node_id)

    def name_of(self, node_id: str) -> str:
        return next(name for name, node in self.nodes.items() if node.node_id == node_id)

    def kill(self, name: str) -> float:
        """Kill every process of the node at once; returns when Ray has marked it dead (the seconds that took)."""
        node = self.nodes.pop(name)
        started = time.monotonic()
        node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
        self._wait(lambda: not node_alive(node.node_id), f"node {name} marked dead", timeout_s=120)
        return time.monotonic() - started

    def close(self) -> None:
        for name in list(self.nodes):
            self.kill(name)

    @staticmethod
    def _wait(condition: Any, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.5)


def node_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def actor_nodes(class_name: str) -> list[str]:
    """The node ids of the live actors whose class name starts with `class_name` (replicas: `ServeReplica:`)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return [a.node_id for a in actors if a.class_name.startswith(class_name)]
