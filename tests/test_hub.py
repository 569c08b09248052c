"""pts_hf/hub.py: the generated model card says how to load each format."""

from pts_hf.hub import model_card


def test_model_card_per_format():
    side = {"method": "fcpts", "target_sparsity": 0.9, "global_sparsity": 0.9, "format": "dense",
            "calibration": {"samples": 128, "seed": 0}, "layers": {f"l{i}.weight": {"numel": 10, "sparsity": 0.9}
                                                                 for i in range(3)}}
    dense = model_card(side, "me/m", max_rows=2)
    assert "AutoModel.from_pretrained(\"me/m\")" in dense and "library_name: transformers" in dense
    assert "| `l0.weight` | 10 | 0.9000 |" in dense and "1 more" in dense and "128 unlabeled samples" in dense
    bitmask = model_card({**side, "format": "bitmask"}, "me/m")
    assert "pts_hf.load_sparse(\"me/m\")" in bitmask and "register_transformers_plugin" in bitmask
