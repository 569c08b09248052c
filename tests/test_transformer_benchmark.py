"""examples/transformer_benchmark.py end to end on a tiny random BertModel and tiny texts (no downloads)."""

import pytest
import torch

from tests.test_examples import _load
from tests.tiny_models import hf_bert

WORDS = ["the", "a", "film", "news", "fire", "people", "good", "bad", "was", "is", "very", "not", "town", "today",
         "and", "it", "funny", "dull", "homes", "police"]


@pytest.fixture()
def tiny_assets(tmp_path, monkeypatch):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]) + "\n")
    model_dir = tmp_path / "bert"
    torch.manual_seed(0)
    hf_bert().save_pretrained(model_dir)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)

    def sentence(k: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=gen))

    texts = tmp_path / "texts"
    texts.mkdir()
    docs = [" ".join(sentence(6).capitalize() + "." for _ in range(4)) for _ in range(12)]
    (texts / "lee_background.cor").write_text("\n".join(docs) + "\n", encoding="latin-1")
    labelled = [f"__label__{'pos' if i % 2 else 'neg'} {sentence(5)} ." for i in range(20)]
    (texts / "pang_lee_polarity.cor").write_text("\n".join(labelled) + "\n", encoding="latin-1")
    monkeypatch.setenv("PTS_HF_GENSIM_DATA", str(texts))
    return model_dir


def test_variant_strings_parse_options():
    common = _load("_bench_common")
    assert common.parse_variant("magnitude") == ("magnitude", {})
    assert common.parse_variant("wanda:mask_structure=2:4") == ("wanda", {"mask_structure": "2:4"})
    assert common.parse_variant("fcpts:steps=200,lr=1e-5,progress=false:x=None") == (
        "fcpts", {"steps": 200, "lr": 1e-5, "progress": False, "x": None})
    with pytest.raises(ValueError, match="not key=value"):
        common.parse_variant("magnitude:allocation")


def test_sentences_and_probe():
    ev = _load("_text_eval")
    assert ev.split_sentences("Fires burn in the town. Police said 500 homes were lost! Ok. \"It is bad,\" he said.") \
        == ["Fires burn in the town.", "Police said 500 homes were lost!", "\"It is bad,\" he said."]
    calib, held = ev.calibration_split(["One two three four. Five six seven eight.", "A b c d. E f g h.",
                                        "I j k l."], n_calib=3, n_heldout=5)
    assert calib == ["One two three four.", "Five six seven eight.", "A b c d."] and held == ["I j k l."]
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    separable = torch.randn(60, 8, generator=g) + 3.0 * labels[:, None]
    assert ev.probe_accuracy(separable, labels) > 95
    assert ev.probe_accuracy(torch.randn(60, 8, generator=g), labels) < 80


def test_benchmark_runs_a_variant_and_reports_failures_per_row(tiny_assets):
    bench = _load("transformer_benchmark")
    results = bench.main(["--model", str(tiny_assets), "--calib-sentences", "16", "--heldout-sentences", "8",
                          "--max-length", "32", "--batch-size", "8", "--sparsities", "0.5",
                          "--structures", "unstructured", "--variants", "magnitude:allocation=erk",
                          "no-such-method", "llmcompressor-wanda", "--peers-python", str(tiny_assets / "no-python"),
                          "--no-write"])
    meta, rows = results["meta"], {(r["variant"], r["structure"]): r for r in results["rows"]}
    assert meta["calib_sentences"] == 16 and meta["eval_sentences"] == {"polarity": 20, "lee-heldout": 8}
    ok = rows["magnitude:allocation=erk", "unstructured"]
    assert "error" not in ok, ok
    assert ok["achieved"] == pytest.approx(0.5, abs=1e-3)
    assert 0 < ok["cos_polarity"] < 1 and 0 < ok["cos_lee-heldout"] < 1
    assert 0 <= ok["probe"] <= 100 and ok["seconds"] > 0
    assert ok["peak_rss_mib"] >= ok["rss_loaded_mib"] > 0 and ok["delta_rss_mib"] >= 0
    assert "unknown method 'no-such-method'" in rows["no-such-method", "unstructured"]["error"]
    # a peer whose interpreter cannot start fails cleanly, row by row
    assert "cannot start" in rows["llmcompressor-wanda", "unstructured"]["error"]
    table = bench.markdown([results])
    assert "| magnitude:allocation=erk | 50% | 1 | 0.5" in table
    assert "| no-such-method | 50% | 1 | error: unknown method" in table
