"""ONNX export: every model family exports with dynamic shapes and matches PyTorch in onnxruntime."""
import math

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vitseg import create_model, save_weights  # noqa: E402
from vitseg.cli import main  # noqa: E402
from vitseg.errors import CheckpointError, ConfigError  # noqa: E402
from vitseg.models.registry import list_models, model_info  # noqa: E402
from vitseg.tools.export_onnx import export_onnx, second_size, verify_onnx  # noqa: E402
from vitseg.tools.zoo import count_model_params, load_figures  # noqa: E402


def one_model_per_family() -> list[str]:
    """The smallest registered model (by parameter count: the zoo's recorded figure, else counted) of each
    family module, so families registered later are tested without editing this file."""
    recorded = load_figures()

    def params(name):
        return recorded[name]["params"] if name in recorded else count_model_params(name)

    families: dict[str, list[str]] = {}
    for name in list_models():
        families.setdefault(model_info(name).builder.__module__, []).append(name)
    return sorted(min(names, key=lambda n: (params(n), n)) for names in families.values())


SIZE = (64, 96)


@pytest.mark.parametrize("name", one_model_per_family())
def test_family_exports_and_matches(name, tmp_path):
    model = create_model(name, num_classes=5)
    path = export_onnx(model, tmp_path / f"{name}.onnx", size=SIZE)
    sizes = [SIZE, second_size(SIZE)]
    results = verify_onnx(model, path, sizes, batches=[1, 2])
    for r in results:
        assert r["onnx_shape"] == r["torch_shape"], r
        assert r["ok"], f"{name}: onnxruntime differs from PyTorch: {r}"
    assert results[1]["onnx_shape"][0] == 2 and results[1]["onnx_shape"][2:] != results[0]["onnx_shape"][2:]


def test_dynamic_export_traced_at_the_native_grid(tmp_path):
    """Traced at the size the position table was stored for, the graph must still resize it for other sizes."""
    model = create_model("linear_vit_ti16", num_classes=3, img_size=64)
    path = export_onnx(model, tmp_path / "native.onnx", size=(64, 64))
    assert all(r["ok"] for r in verify_onnx(model, path, [(64, 64), (64, 96)]))


def test_static_export_rejects_other_sizes(tmp_path):
    model = create_model("segformer_b0", num_classes=2)
    path = export_onnx(model, tmp_path / "static.onnx", size=(64, 64), dynamic=False)
    assert verify_onnx(model, path, [(64, 64)])[0]["ok"]
    with pytest.raises(CheckpointError, match="onnxruntime failed"):
        verify_onnx(model, path, [(96, 64)])


def test_bad_opset(tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(create_model("segformer_b0", num_classes=2), tmp_path / "x.onnx", size=(64, 64), opset=13)


def test_cli_export_from_checkpoint(tmp_path, capsys):
    """Checkpoint -> ONNX with the parity check; the file holds the inference graph and the metadata."""
    import onnx
    model = create_model("segformer_b0", num_classes=3)
    model.class_names = ["road", "car", "sky"]
    ckpt = tmp_path / "b0.safetensors"
    save_weights(model, ckpt)
    out = tmp_path / "b0.onnx"
    assert main(["export", str(ckpt), "--onnx", str(out), "--size", "64", "64"]) == 0
    text = capsys.readouterr().out
    assert text.count(" ok") == 2 and "max |diff|" in text and "2x3x" in text
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["arch"] == "segformer_b0" and meta["num_classes"] == "3" and '"car"' in meta["class_names"]
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    # No training-only weights: the initialisers hold no more values than the inference graph's parameters
    # (plus the BatchNorm folded into the decoder).
    values = sum(math.prod(t.dims) for t in proto.graph.initializer)
    assert values <= model.num_params() + 4096


def test_cli_export_errors(tmp_path):
    out = tmp_path / "x.onnx"
    assert main(["export", str(tmp_path / "missing.safetensors"), "--onnx", str(out)]) == 4
    assert main(["export", "--onnx", str(out)]) == 2
    assert main(["export", "--model", "no_such_model", "--onnx", str(out)]) == 2
