"""The agent's side of pods: which GPU a pod was given (the device plugin's choice, not the agent's)."""

from thaw.agent.pods import gpu_in


def test_the_pods_gpu_is_the_one_uuid_the_device_plugin_named():
    assert gpu_in("GPU-5d1c9b2e-aaaa-bbbb-cccc-0123456789ab") == "GPU-5d1c9b2e-aaaa-bbbb-cccc-0123456789ab"
    assert gpu_in(" MIG-1234 ") == "MIG-1234"


def test_no_single_gpu_no_choice():
    assert gpu_in("") is None  # a CPU node: nothing to choose
    assert gpu_in("all") is None and gpu_in("void") is None and gpu_in("0") is None  # not a pod's allocation
    assert gpu_in("GPU-a,GPU-b") is None  # several: the worker restores onto the GPUs it recorded
