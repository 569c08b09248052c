"""pts_hf/record.py and pts_hf/report.py: one record, written as the sidecar and as report.json."""

import json

import pytest
import torch

import pts_hf
from pts_hf.checkpoint import make_sidecar
from pts_hf.record import MethodOutcome, RunRecord
from pts_hf.report import format_layer_table, make_report
from tests.tiny_models import small_cnn

X = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_record_round_trips_and_sidecar_and_report_share_its_schema():
    r = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.6, steps=3, batch_size=8, progress=False)
    rec = r.record
    assert RunRecord.from_dict(json.loads(json.dumps(rec.to_dict()))).to_dict() == rec.to_dict()
    side = make_sidecar("dense", rec)
    report = make_report(r, {"dense_top1": 50.0})
    assert "history" not in side and len(report["history"]) == 3
    for key in ("method", "config", "target_sparsity", "global_sparsity", "layers", "extras", "calibration"):
        assert side[key] == report[key], key
    assert side["calibration"] == {"samples": 16, "batches": 2, "seed": 0}
    assert set(side["layers"]["0.weight"]) >= {"numel", "sparsity", "initial_sparsity", "learned_sparsity",
                                                "threshold"}
    table = format_layer_table(report)
    assert "0.weight" in table and "dense_top1: 50.00%" in table


def test_outcome_merge_and_measure():
    a = MethodOutcome(layers={"x": {"a": 1}}, extras={"e": 1}, history=[{"loss": 1.0}])
    a.merge(MethodOutcome(layers={"x": {"b": 2}}, extras={"f": 2}, history=[{"loss": 0.5}]))
    assert a.layers == {"x": {"a": 1, "b": 2}} and a.extras == {"e": 1, "f": 2} and len(a.history) == 2
    w = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    rec = RunRecord.measure({"x": w}).with_outcome(a)
    assert rec.global_sparsity == pytest.approx(0.75) and rec.layers["x"].extras == {"a": 1, "b": 2}
