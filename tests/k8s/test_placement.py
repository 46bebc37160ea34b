"""Choosing the node and the GPU for a restore: same GPU model, free capacity, an agent, and a reason for every no."""

from __future__ import annotations

import pytest

from thaw.k8s.placement import (
    GpuNeed,
    NoPlacement,
    choose_gpu,
    choose_node,
    free_gpus,
    normalize_product,
    requested_gpus,
)

from thaw.api.models import AgentStatus
from thaw.model import GpuInfo

from .fakes import node, pod


def status(gpus: list[dict]) -> AgentStatus:
    """An agent's status reporting these GPUs (built without validation: the GPUs here have short fake UUIDs)."""
    return AgentStatus.model_construct(gpus=[GpuInfo.model_construct(**g) for g in gpus], gpu_error=None)

H200 = GpuNeed.of("NVIDIA H200", 1)


def agents(*names):
    return lambda n: n in names


def test_driver_and_feature_discovery_spellings_of_a_model_are_the_same_model():
    assert normalize_product("NVIDIA H200") == normalize_product("NVIDIA-H200") == "nvidia-h200"
    assert normalize_product("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert GpuNeed.of("", 0) == GpuNeed("", 0)
    assert GpuNeed.of("NVIDIA-H200", 0).count == 1  # a GPU snapshot needs at least one


def test_gpu_requests_follow_the_schedulers_rule_and_finished_pods_free_theirs():
    p = pod("a", gpus=2)
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "3"}}}]
    assert requested_gpus(p) == 3
    n = node("node-a", product="NVIDIA-H200", gpus=8)
    assert free_gpus(n, [pod("a", gpus=2), pod("b", gpus=1, phase="Succeeded"), pod("c", gpus=4, node="other")]) == 6


def test_picks_the_node_with_the_snapshots_model_and_most_free_gpus():
    nodes = [node("a100", product="NVIDIA-A100-SXM4-80GB", gpus=8), node("h200-full", product="NVIDIA-H200", gpus=1),
             node("h200-1", product="NVIDIA-H200", gpus=2), node("h200-2", product="NVIDIA-H200", gpus=4)]
    pods = [pod("x", node="h200-full", gpus=1), pod("y", node="h200-2", gpus=3)]
    fit = choose_node(nodes, pods, H200, agents("a100", "h200-full", "h200-1", "h200-2"))
    assert (fit.node, fit.free_gpus) == ("h200-1", 2)


def test_no_fit_explains_every_candidate():
    nodes = [node("a100", product="NVIDIA-A100", gpus=8), node("full", product="NVIDIA-H200", gpus=1),
             node("noagent", product="NVIDIA-H200", gpus=8), node("cordoned", product="NVIDIA-H200", gpus=8, cordoned=True),
             node("down", product="NVIDIA-H200", gpus=8, ready=False), node("plain", gpus=0)]
    with pytest.raises(NoPlacement) as info:
        choose_node(nodes, [pod("x", node="full", gpus=1)], H200,
                    agents("a100", "full", "cordoned", "down", "plain"))
    text = str(info.value)
    for expected in ("a100: GPU nvidia-a100, the snapshot needs nvidia-h200", "full: 0 free nvidia.com/gpu, needs 1",
                     "noagent: no thaw agent runs there", "cordoned: cordoned", "down: NotReady",
                     "plain: no nvidia.com/gpu.product label"):
        assert expected in text


def test_cpu_only_snapshots_go_to_any_node_with_an_agent():
    nodes = [node("b", gpus=0), node("a", gpus=0)]
    assert choose_node(nodes, [], GpuNeed(), agents("a", "b")).node == "a"
    with pytest.raises(NoPlacement, match="a node with an agent"):
        choose_node(nodes, [], GpuNeed(), agents())


def test_a_pinned_node_must_fit_and_a_pods_own_gpu_request_is_not_counted_against_it():
    nodes = [node("h1", product="NVIDIA-H200", gpus=1), node("h2", product="NVIDIA-H200", gpus=8)]
    mine = pod("worker-7", node="h1", gpus=1)
    assert choose_node(nodes, [mine], H200, agents("h1", "h2"), pinned="h1", exclude_pod="ml/worker-7").node == "h1"
    with pytest.raises(NoPlacement, match="h1: 0 free"):
        choose_node(nodes, [mine], H200, agents("h1", "h2"), pinned="h1")
    with pytest.raises(NoPlacement, match="does not exist"):
        choose_node(nodes, [], H200, agents("h1"), pinned="h9")


def test_choose_gpu_takes_the_right_model_with_most_free_memory():
    info = status([{"uuid": "GPU-a", "name": "NVIDIA A100", "memory_free": 90},
                   {"uuid": "GPU-b", "name": "NVIDIA H200", "memory_free": 10},
                   {"uuid": "GPU-c", "name": "NVIDIA H200", "memory_free": 50}])
    assert choose_gpu(info, H200) == "GPU-c"
    assert choose_gpu(info, H200, wanted="GPU-b") == "GPU-b"
    with pytest.raises(NoPlacement, match="GPU-a is not a nvidia-h200"):
        choose_gpu(info, H200, wanted="GPU-a")
    with pytest.raises(NoPlacement, match="reports no nvidia-h200"):
        choose_gpu(status([]), H200)
    assert choose_gpu(info, GpuNeed("nvidia-h200", 1, memory=40)) == "GPU-c"
    tight = status([{"uuid": "GPU-x", "name": "NVIDIA H200", "memory_free": 10 << 20}])
    with pytest.raises(NoPlacement, match="has 20 MiB free .GPU-x: 10 MiB"):
        choose_gpu(tight, GpuNeed("nvidia-h200", 1, memory=20 << 20))
    assert choose_gpu(status([{"uuid": "GPU-y", "name": "NVIDIA H200", "memory_free": None}]),
                      GpuNeed("nvidia-h200", 1, memory=1)) == "GPU-y"  # NVML unavailable: the agent decides
    assert choose_gpu(status([]), GpuNeed()) is None
    assert choose_gpu(info, GpuNeed()) is None  # CPU-only: no GPU to pick
    assert choose_gpu(info, GpuNeed("nvidia-h200", 2)) is None  # several: the agent maps them as recorded
