"""afinar.planning.devices: the GPU table `afinar plan` reads is coherent, sourced, and imports nothing heavy."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from afinar.planning.devices import ACHIEVABLE_FRACTION, DEVICES, Device

EXPECTED_KEYS = {"rtx2060", "rtx3050-4gb", "rtx3050-8gb", "rtx3060", "rtx4060", "t4", "l4", "a100-40gb",
                 "a100-80gb", "h100"}
TURING = {"rtx2060", "t4"}  # no bf16 tensor cores


def test_the_table_holds_exactly_the_planned_devices():
    assert set(DEVICES) == EXPECTED_KEYS


@pytest.mark.parametrize("key", sorted(EXPECTED_KEYS))
def test_every_entry_is_sane_and_sourced(key):
    device = DEVICES[key]
    assert isinstance(device, Device)
    assert device.key == key and key == key.lower() and " " not in key
    assert device.memory_gib > 0
    peaks = device.peak_tflops
    assert set(peaks) <= {"fp32", "fp16", "bf16"}
    assert peaks["fp32"] is not None and peaks["fp32"] > 0
    assert peaks["fp16"] is not None and peaks["fp16"] >= peaks["fp32"]
    if "bf16" in peaks:
        assert peaks["bf16"] is not None and peaks["bf16"] >= peaks["fp32"]
    assert device.memory_bandwidth_gbs is None or device.memory_bandwidth_gbs > 0
    assert device.source.strip()
    # A value left as None must say so in its source.
    if device.memory_bandwidth_gbs is None or None in peaks.values():
        assert "not found" in device.source


def test_bf16_only_where_there_are_bf16_tensor_cores():
    assert {key for key, device in DEVICES.items() if "bf16" not in device.peak_tflops} == TURING


def test_the_two_a100s_differ_only_in_memory_and_bandwidth():
    small, large = DEVICES["a100-40gb"], DEVICES["a100-80gb"]
    assert small.peak_tflops == large.peak_tflops
    assert small.memory_gib < large.memory_gib
    assert small.memory_bandwidth_gbs < large.memory_bandwidth_gbs
    ignored = {"key", "name", "source", "memory_gib", "memory_bandwidth_gbs"}
    fields = [f.name for f in dataclasses.fields(Device) if f.name not in ignored]
    assert [getattr(small, f) for f in fields] == [getattr(large, f) for f in fields]


def test_devices_are_frozen_and_hashable():
    device = DEVICES["t4"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.memory_gib = 32
    assert hash(device) == hash(DEVICES["t4"])


def test_achievable_fraction_is_a_fraction():
    assert "lora" in ACHIEVABLE_FRACTION
    assert all(0 < value <= 1 for value in ACHIEVABLE_FRACTION.values())


def test_importing_the_table_pulls_in_no_heavy_library():
    code = ("import sys, afinar.planning.devices; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
