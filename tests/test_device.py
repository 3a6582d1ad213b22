"""mechlearn.device: the device a notebook runs on, and MECHLEARN_DEVICE's checks."""

import pytest
import torch

import mechlearn


def test_the_override_is_used(monkeypatch) -> None:
    monkeypatch.setenv("MECHLEARN_DEVICE", "cpu")
    assert mechlearn.device() == torch.device("cpu")


def test_without_override_a_real_device_is_chosen(monkeypatch) -> None:
    monkeypatch.delenv("MECHLEARN_DEVICE", raising=False)
    assert torch.zeros(1, device=mechlearn.device()).device.type == mechlearn.device().type


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["cuad", "gpu", "cpu:x"])
def test_a_misspelt_device_is_named(monkeypatch, name) -> None:
    monkeypatch.setenv("MECHLEARN_DEVICE", name)
    with pytest.raises(ValueError, match=f"MECHLEARN_DEVICE='{name}' is not a device"):
        mechlearn.device()


@pytest.mark.bad_input
def test_a_device_this_machine_lacks_is_named(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        monkeypatch.setenv("MECHLEARN_DEVICE", name)
        with pytest.raises(ValueError, match="no such device"):
            mechlearn.device()


@pytest.mark.bad_input
def test_a_gpu_index_beyond_the_gpus_is_named(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("MECHLEARN_DEVICE", "cuda:0")
    assert mechlearn.device() == torch.device("cuda:0")
    monkeypatch.setenv("MECHLEARN_DEVICE", "cuda:3")
    with pytest.raises(ValueError, match="no such device"):
        mechlearn.device()
