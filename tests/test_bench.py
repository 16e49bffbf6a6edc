"""The benchmark function and `vitseg bench` return sane figures on a tiny model (no wall-clock limits)."""
import json

import pytest
import torch

from vitseg import create_model
from vitseg.cli import main
from vitseg.errors import ConfigError
from vitseg.tools.benchmark import benchmark, format_benchmark


@pytest.fixture(scope="module")
def tiny():
    return create_model("segformer_b0", num_classes=4)


def check_common(stats, batch, runs):
    assert stats["runs"] == runs and stats["batch"] == batch and stats["device"] == "cpu"
    assert 0 < stats["latency_ms_min"] <= stats["latency_ms_p10"] <= stats["latency_ms_median"]
    assert stats["latency_ms_median"] <= stats["latency_ms_p90"] <= stats["latency_ms_max"]
    assert stats["latency_ms_std"] >= 0
    assert stats["throughput_img_s"] == pytest.approx(batch / (stats["latency_ms_median"] / 1000))
    assert stats["peak_memory_mb"] >= 0 and stats["peak_memory_total_mb"] >= stats["peak_memory_mb"]
    assert stats["memory_method"] and stats["threads"] == torch.get_num_threads()


def test_inference_benchmark(tiny):
    stats = benchmark(tiny, batch=2, size=(64, 64), device="cpu", runs=3, warmup=1)
    check_common(stats, 2, 3)
    assert stats["mode"] == "inference" and stats["params"] == tiny.num_params()
    assert "latency" in format_benchmark(stats, "segformer_b0")


def test_train_step_benchmark_leaves_model_untouched(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    stats = benchmark(tiny, batch=1, size=(64, 64), runs=2, warmup=1, train_step=True)
    check_common(stats, 1, 2)
    assert stats["mode"] == "train_step" and stats["amp"] == "off"
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_bad_arguments(tiny):
    with pytest.raises(ConfigError, match="runs"):
        benchmark(tiny, runs=0)
    with pytest.raises(ConfigError, match="amp"):
        benchmark(tiny, amp="fp8")


def test_cli_bench(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "segformer_b0", "--size", "64", "64", "--runs", "2", "--warmup", "1", "--threads", "1",
                 "--num-classes", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "median" in text and "images/s" in text and "threads 1" in text
    assert json.loads(out.read_text())["threads"] == 1
    assert main(["bench", "not_a_model"]) == 2
