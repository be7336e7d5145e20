"""A real device's view of itself: CPU/GPU selection with CPU fallback, autocast, memory, node-config overrides."""

import pytest
import torch

from client.device_detect import (
    autocast,
    autocast_dtype,
    detect_host,
    device_class_of,
    memory_gb,
    select_device,
    trainer_of,
)
from runconfig.load import ConfigError, compose

pytestmark = pytest.mark.deployment


def test_cuda_request_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cuda") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="client.device"):
        select_device("tpu")


def test_cuda_is_chosen_where_it_works(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # Jetson TX2 / Xavier
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # Ampere, Orin
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.bfloat16


def test_cpu_precision_rules():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None  # fp32 on CPUs unless asked
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "fp16") is None  # no fp16 autocast on CPUs: falls back to fp32
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="client.precision"):
        autocast_dtype(cpu, "int4")


def test_bf16_autocast_really_runs_matmuls_in_bf16_on_cpu():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "auto"):
        assert layer(x).dtype == torch.float32


def test_host_profile_reads_memory(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8039140 kB\nMemFree:  100 kB\n")  # a Jetson TX2
    assert memory_gb(meminfo) == pytest.approx(7.67, abs=0.01)
    host = detect_host()
    assert host.cpu_count >= 1 and host.memory_gb > 0 and not host.cuda
    assert set(host.metrics()) >= {"host-memory-gb", "host-cuda", "host-jetson"}


def test_node_config_overrides_device_class_and_trainer():
    classes = compose(["+fleet=8dev_test"]).fleet.classes
    assert device_class_of({"partition-id": 0}, classes, "pixel_8") == "pixel_8"
    assert device_class_of({"device-class": "jetson_tx2"}, classes, "pixel_8") == "jetson_tx2"
    with pytest.raises(ValueError, match="not a class of this fleet"):
        device_class_of({"device-class": "iphone"}, classes, "pixel_8")
    sent = "lora_backprop"
    assert trainer_of({"partition-id": 1}, None, classes, "pixel_8", sent) == sent
    assert trainer_of({"trainer": "zeroqat"}, None, classes, "pixel_8", sent) == "zeroqat"
    assert trainer_of({"trainer": "zeroqat"}, "lora_backprop", classes, "pixel_8", sent) == "lora_backprop"
    assert trainer_of({"device-class": "jetson_tx2"}, None, classes, "pixel_8", sent) == classes["jetson_tx2"].trainer


def test_bad_device_settings_are_config_errors():
    with pytest.raises(ConfigError, match="client.device"):
        compose(["+fleet=8dev_test", "client.device=gpu0"])
    with pytest.raises(ConfigError, match="client.precision"):
        compose(["+fleet=8dev_test", "client.precision=half"])


def test_lora_trainer_runs_under_bf16_autocast_and_keeps_fp32_adapter():
    """The real trainer inside the ClientApp's autocast: finite loss, an fp32 adapter that moved."""
    import numpy as np

    from client.device_data import DeviceData
    from client.trainers import get_trainer
    from models.architectures import build_config, build_model
    from models.lora import adapter_arrays, attach_lora
    from protocol.messages import Work
    from runconfig.schema import ModelConfig

    cfg = ModelConfig(name="t", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model = attach_lora(build_model(build_config(cfg, 64, 0, 1, 2), seed=0), compose(["+fleet=8dev_test"]).method.lora, 0)
    before = adapter_arrays(model)
    ids = torch.randint(3, 64, (8, 16))
    data = DeviceData(ids, ids.clone(), ids[:2], ids[:2].clone())
    work = Work(server_round=1, device_index=0, trainer="lora_backprop", local_steps=2, batch_size=4, lr=1e-2,
                rank=8, seed=0)
    with autocast(select_device("cpu"), "bf16"):
        result = get_trainer("lora_backprop").train(model, data, work)
    assert np.isfinite(result.metrics["train_loss"])
    assert all(v.dtype == np.float32 for v in result.adapter.values())
    assert any(not np.allclose(result.adapter[k], before[k]) for k in before)
