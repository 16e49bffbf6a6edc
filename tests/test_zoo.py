"""The model zoo: recorded figures match the registered models; the table and its Markdown."""
from pathlib import Path

import pytest

from vitseg.cli import main
from vitseg.models.registry import create_model, list_models
from vitseg.tools.flops import measure
from vitseg.tools.zoo import (FIGURES_PATH, build_for_count, collect, count_model_params, format_markdown,
                              format_table, load_figures, paper_setting, rows)

UPDATE = ("run `vitseg zoo --update --markdown docs/model_zoo.md` (without --update it measures only the models "
          "missing from the file) and commit vitseg/tools/zoo_figures.json and docs/model_zoo.md")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "model_zoo.md"
FIGURES = load_figures()


def test_every_registered_model_is_recorded():
    missing = [n for n in list_models() if n not in FIGURES]
    assert not missing, f"models without recorded zoo figures: {missing}; {UPDATE}"
    stale = [n for n in list_models() if (FIGURES[n]["size"], FIGURES[n]["num_classes"])
             != (list(paper_setting(n)[0]), paper_setting(n)[1])]
    assert not stale, f"paper input size or class count changed for {stale}; {UPDATE}"


@pytest.mark.parametrize("name", list_models())
def test_params_match_recorded(name):
    if name not in FIGURES:
        pytest.fail(f"{name} has no recorded zoo figures; {UPDATE}")
    measured = count_model_params(name)
    recorded = FIGURES[name]["params"]
    assert measured == recorded, (f"{name}: {measured:,} parameters now, {recorded:,} recorded in "
                                  f"{FIGURES_PATH.name}. If the change is intended, {UPDATE}")


def test_meta_count_equals_real_count():
    real = create_model("segformer_b1", num_classes=150).strip_training_modules().num_params()
    assert build_for_count("segformer_b1", 150).num_params() == real == count_model_params("segformer_b1")


def test_segformer_b0_flops_match_recorded():
    size, num_classes = paper_setting("segformer_b0")
    assert size == (512, 512)
    model = create_model("segformer_b0", num_classes=num_classes)
    graph, executed = measure(model, size, paper_graph=True), measure(model, size)
    assert graph.flops == FIGURES["segformer_b0"]["flops"], f"segformer_b0 FLOPs changed; {UPDATE}"
    assert executed.flops == FIGURES["segformer_b0"]["flops_executed"], f"segformer_b0 FLOPs changed; {UPDATE}"
    # Paper: 8.4 G multiply-accumulates (SegFormer Table 1), counted by mmcv with norms and activations,
    # which flop_counter leaves out; the matmul/conv/attention share is what remains.
    assert 0.8 < graph.macs / 1e9 / 8.4 <= 1.0


def test_docs_model_zoo_is_current():
    assert DOCS.exists(), f"{DOCS} is missing; {UPDATE}"
    recorded = {n: FIGURES[n] for n in list_models() if n in FIGURES}
    assert DOCS.read_text() == format_markdown(rows(recorded)), \
        f"{DOCS} is out of date with the recorded figures; {UPDATE}"


def test_collect_measures_only_missing(tmp_path, monkeypatch):
    """collect() measures models missing from the file (or all with update=True) and writes them back."""
    from vitseg.tools import zoo
    measured = []
    # Stand in for the slow measurement with the recorded record; this test is about the caching logic.
    monkeypatch.setattr(zoo, "measure_model", lambda name: measured.append(name) or dict(FIGURES[name]))
    path = tmp_path / "figures.json"
    first = collect("segformer_b[01]", path=path, log=None)
    assert measured == ["segformer_b0", "segformer_b1"] and load_figures(path) == first
    assert collect("segformer_b0", path=path, log=None) == {"segformer_b0": FIGURES["segformer_b0"]}
    assert len(measured) == 2
    collect("segformer_b0", path=path, update=True, log=None)
    assert measured[-1] == "segformer_b0" and len(measured) == 3


def test_table_and_cli(capsys, tmp_path):
    table = rows({n: FIGURES[n] for n in ["segformer_b0", "segformer_b5"]})
    b0 = table[0]
    assert b0.params_ratio == pytest.approx(FIGURES["segformer_b0"]["params"] / 1e6 / 3.8)
    assert b0.flops_ratio == pytest.approx(FIGURES["segformer_b0"]["flops"] / 2e9 / 8.4)
    text = format_table(table)
    assert "paper GFLOPs" in text and "640x640" in text
    md = format_markdown(table)
    assert md.count("\n| segformer_") == 2
    out = tmp_path / "zoo.md"
    assert main(["zoo", "--pattern", "segformer_b0", "--markdown", str(out)]) == 0
    assert "segformer_b0" in capsys.readouterr().out and "| segformer_b0 |" in out.read_text()
    assert main(["zoo", "--pattern", "nothing_*"]) == 2
