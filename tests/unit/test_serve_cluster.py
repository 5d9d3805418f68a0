"""The Ray cluster checks of serve and generate (``tiue_export.serve.cluster.check_resources``),
against a stand-in for Ray's two calls: no cluster is started."""

from __future__ import annotations

import sys
import types

import pytest

from tiue_export.errors import InputError
from tiue_export.serve.cluster import check_resources


@pytest.fixture
def cluster(monkeypatch):
    """Ray answering for nodes of the given resources."""

    def make(*nodes: dict):
        total: dict[str, float] = {}
        for n in nodes:
            for k, v in n.items():
                total[k] = total.get(k, 0.0) + v
        ray = types.SimpleNamespace(cluster_resources=lambda: total, nodes=lambda: [{"Alive": True, "Resources": n} for n in nodes])
        monkeypatch.setitem(sys.modules, "ray", ray)

    return make


def test_fractions_count_as_ray_counts_them(cluster):
    """50 x 0.14 CPUs fill 7 CPUs exactly (0.14 * 50 is 7.000000000000001 in floats); 51 do not."""
    cluster({"CPU": 4.0}, {"CPU": 3.0})
    check_resources({"CPU": ("--cpus-per-replica", 0.14)}, 50, "replicas")
    with pytest.raises(InputError, match=r"51 replicas x --cpus-per-replica 0.14 is 7.14 CPUs; the Ray cluster has 7: ask for fewer"):
        check_resources({"CPU": ("--cpus-per-replica", 0.14)}, 51, "replicas")


def test_one_actor_larger_than_any_node(cluster):
    """5 CPUs fit the cluster's total (7) but no node (4 and 3): Ray would wait for ever."""
    cluster({"CPU": 4.0, "GPU": 1.0}, {"CPU": 3.0})
    check_resources({"CPU": ("--cpus-per-worker", 4.0), "GPU": ("--gpus-per-worker", 1.0)}, 1, "workers")
    with pytest.raises(InputError, match=r"--cpus-per-worker 5 asks for more CPUs than the Ray cluster can give one actor \(its largest node has 4, 7 CPUs in all\)"):
        check_resources({"CPU": ("--cpus-per-worker", 5.0)}, 1, "workers")
    check_resources({"GPU": ("--gpus-per-worker", 0.0)}, 9, "workers")  # no ask, no check
