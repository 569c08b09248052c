"""The ``pts-hf`` command line: ``sparsify``, ``evaluate`` and ``inspect``.

Bad input (unknown model or data, missing folder, non-empty output without ``--overwrite``, a model whose input
does not fit the data, invalid options) prints one line ``pts-hf: error: ...`` and exits with code 2, having
written nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main"]

DEFAULT_MODEL = "resnet20-fmnist"
DEFAULT_DATA = "fashion-mnist"


class CLIError(Exception):
    """Reported as one line on stderr, exit code 2 (bad input) unless ``code`` says otherwise."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    from pts_hf.checkpoint.formats import FORMATS
    from pts_hf.sparsifiers import SPARSIFIERS

    parser = argparse.ArgumentParser(prog="pts-hf", description="Post-training sparsity for PyTorch / HF models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{sparsify,evaluate,inspect,bench}")

    sp = sub.add_parser(
        "sparsify", help="sparsify a model on calibration data",
        description="Sparsify MODEL to an exact global sparsity using unlabeled calibration images from DATA. "
                    f"With neither --model nor --data it runs the embedded default: the bundled {DEFAULT_MODEL} on "
                    "Fashion-MNIST at 90% with FCPTS, and prints dense vs sparse test accuracy.")
    sp.add_argument("--model", help="bundled name (resnet20-fmnist, vit-fmnist, mobilenet-fmnist), "
                                 "a folder (HF config.json or a "
                                    "pts-hf output), or a timm model name (pretrained weights need internet)")
    sp.add_argument("--data", help="'fashion-mnist', a folder of class sub-folders of images, or a `datasets` "
                                   "folder / Hub name with an image column")
    sp.add_argument("--method", default=None, choices=sorted(SPARSIFIERS),
                    help="sparsification method (default: fcpts, or the --config's)")
    sp.add_argument("--config", type=Path, metavar="JSON",
                    help="a method config to run: a recipe (integrations/recipes/), a sparsity_config.json or a "
                         "report.json of an earlier run; other options given here override it")
    sp.add_argument("--sparsity", type=_sparsity, default=None,
                    help="global target sparsity in [0, 1) (default 0.9; (M-N)/M with --mask-structure N:M)")
    sp.add_argument("--allocation", default=None, help="(initial) per-layer allocation: uniform, erk, lamp, "
                                                       "l2norm, global, regrow, owl (default: the method's)")
    sp.add_argument("--mask-structure", default="unstructured",
                    help="'unstructured' or 'N:M' (e.g. 2:4): at most N non-zeros in every M consecutive inputs")
    sp.add_argument("--calib-samples", type=_positive, default=1024,
                    help="calibration images drawn (seeded) from the training split")
    sp.add_argument("--steps", type=_positive, help="optimisation steps (learned methods; default: the method's)")
    sp.add_argument("--batch-size", type=_positive, default=None,
                    help="calibration batch size (default 64, or the --config's)")
    sp.add_argument("--seed", type=int, default=None, help="seed for sampling and training (default 0, or the "
                                                           "--config's)")
    sp.add_argument("--eval", action="store_true", help="report dense and sparse top-1 on the test split")
    sp.add_argument("--eval-samples", type=_positive, help="evaluate on this many test images (default: all)")
    sp.add_argument("--output", type=Path, help="write model weights, sparsity_config.json, report.json and "
                                                "allocation.png here")
    sp.add_argument("--format", default="dense", choices=sorted(FORMATS),
                    help="on-disk format of the weights: 'dense' (zeros in place; plain from_pretrained / "
                         "load_state_dict read it) or 'bitmask' (compressed; pts_hf.load_sparse reads it)")
    sp.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty --output folder: the files pts-hf writes (and those an earlier "
                         "pts-hf run listed in its report.json) are replaced, every other file is kept")
    sp.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                    help="a method option (JSON value), e.g. --option threshold_lr=0.02; repeatable")
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sp.add_argument("--checkpoint-dir", type=Path,
                    help="where fcpts / unipts save their state while running (default: OUTPUT.checkpoint next to "
                         "--output, or a folder in the system temporary directory); removed after a successful run")
    sp.add_argument("--checkpoint-every", type=_positive, default=50, help="steps between checkpoints")
    sp.add_argument("--resume", type=Path, metavar="DIR",
                    help="continue an interrupted run from its checkpoint folder (give the same other arguments)")

    ev = sub.add_parser("evaluate", help="top-1 accuracy of a (sparse) model",
                        description="Top-1 accuracy and global sparsity of MODEL on DATA's test split.")
    ev.add_argument("--model", required=True, help="a pts-hf output folder, HF folder, bundled or timm name")
    ev.add_argument("--data", default=DEFAULT_DATA, help="as for sparsify (default: fashion-mnist)")
    ev.add_argument("--batch-size", type=_positive, default=256, help="evaluation batch size")
    ev.add_argument("--eval-samples", type=_positive, help="evaluate on this many test images (default: all)")

    ins = sub.add_parser("inspect", help="per-layer sparsity table of a pts-hf output folder",
                         description="Print the per-layer table of DIR's report.json (or, without one, the "
                                     "sparsity measured in DIR's safetensors weights).")
    ins.add_argument("dir", type=Path, help="a folder written by pts-hf sparsify")

    from pts_hf.bench_cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def _check_output(path: Path | None, overwrite: bool) -> None:
    """Before any work: a usable, writable, non-dangerous output folder (see pts_hf.checkpoint.output)."""
    if path is None:
        return
    from pts_hf.checkpoint.output import OutputLocationError, check_output_location

    try:
        check_output_location(path, overwrite=overwrite, what="--output")
    except OutputLocationError as e:
        raise CLIError(str(e)) from e


def _check_output_space(path: Path | None, model: Any) -> None:
    """Before the work: room for the weights (+ report and chart) where they will be written."""
    if path is None:
        return
    from pts_hf.checkpoint.output import OutputLocationError, check_output_location

    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + 2 * 2**20
    try:
        check_output_location(path, overwrite=True, need_bytes=int(need * 1.1), what="--output")
    except OutputLocationError as e:
        raise CLIError(str(e)) from e


def _check_fits(model: Any, x: Any) -> None:
    import torch

    try:
        with torch.no_grad():
            model.eval()
            model(x[:2])
    except Exception as e:
        raise CLIError(f"the model's input does not fit the data (input shape {tuple(x.shape[1:])}): "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _top1(model: Any, dataset: Any, batch_size: int, progress: bool = False) -> float:
    from pts_hf.data import evaluate_top1

    return evaluate_top1(model, dataset, batch_size=batch_size, progress=progress)


@contextlib.contextmanager
def _stage(text: str, after_s: float = 2.0) -> Iterator[None]:
    """One line on stderr when a stage (loading, evaluation) is still running after ``after_s`` seconds, so a long
    silence is explained while quick failures stay one line."""
    timer = threading.Timer(after_s, lambda: print(f"pts-hf: {text} ...", file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Warnings as one plain line (no file name, line number or source line)."""
    print(f"pts-hf: warning: {message}", file=sys.stderr if file is None else file, flush=True)


def _save_model(loaded: Any, result: Any, folder: Path, fmt: str) -> None:
    """The weights in ``fmt`` and the sidecar, through the one checkpoint writer; a bundled / timm model also gets
    ``pts_model.json`` naming its architecture, so ``load_sparse`` and ``--model OUTPUT`` rebuild it."""
    from pts_hf.checkpoint import write_checkpoint

    write_checkpoint(result.model, folder, fmt, record=result.record)
    if loaded.kind != "hf":
        (folder / "pts_model.json").write_text(json.dumps({"kind": loaded.kind, "source": loaded.source}) + "\n")


def _previous_files(out: Path) -> set[str]:
    """Files an earlier pts-hf run listed in its report.json (replaced by --overwrite); nothing else is touched."""
    try:
        report = json.loads((out / "report.json").read_text())
        return {f for f in report.get("files", []) if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")}
    except (OSError, ValueError, AttributeError):
        return set()


def _write_to(loaded: Any, result: Any, report: dict[str, Any], out: Path, fmt: str) -> None:
    from pts_hf.checkpoint.output import staged_output
    from pts_hf.report import plot_allocation, write_json_atomic

    with staged_output(out, replace_names=_previous_files(out)) as tmp:
        _save_model(loaded, result, tmp, fmt)
        plot_allocation(report, tmp / "allocation.png")
        report = {**report, "files": sorted([f.name for f in tmp.iterdir() if f.is_file()] + ["report.json"])}
        write_json_atomic(tmp / "report.json", report)


def _write_output(loaded: Any, result: Any, report: dict[str, Any], out: Path, fmt: str) -> Path:
    """Write the result to ``out``; if that fails, ``out`` keeps what it held, and the result (still in memory)
    goes to a folder the user types (on a terminal) or to a new folder in the system temporary directory."""
    try:
        _write_to(loaded, result, report, out, fmt)
        return out
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
    print(f"pts-hf: could not write {out}/ ({reason}); it was left as it was", file=sys.stderr, flush=True)
    while sys.stdin is not None and sys.stdin.isatty():
        answer = input("pts-hf: the result is still in memory; another folder to save it to (empty: discard): ")
        if not answer.strip():
            raise CLIError(f"could not write {out}/ ({reason}); result discarded", code=1)
        try:
            _check_output(Path(answer.strip()), overwrite=False)
            _write_to(loaded, result, report, Path(answer.strip()), fmt)
            return Path(answer.strip())
        except Exception as e2:  # CLIError included
            print(f"pts-hf: could not write there either: {e2}", file=sys.stderr, flush=True)
    try:
        rescue = Path(tempfile.mkdtemp(prefix="pts-hf-rescue-"))
        rescue.rmdir()  # staged_output creates it again and removes it if the write fails
        _write_to(loaded, result, report, rescue, fmt)
    except Exception as e2:
        raise CLIError(f"could not write {out}/ ({reason}) nor a rescue copy ({type(e2).__name__}: {e2}); "
                       "nothing was written", code=1) from e2
    raise CLIError(f"could not write {out}/ ({reason}; it was left as it was); the result was saved to {rescue}/ "
                   "instead", code=1)


def cmd_sparsify(args: argparse.Namespace) -> int:
    import torch

    import pts_hf
    from pts_hf.report import format_layer_table, make_report
    from pts_hf.sources import check_data_spec, load_images, resolve_model

    if (args.model is None) != (args.data is None):
        raise CLIError("give both --model and --data, or neither for the embedded default")
    embedded = args.model is None
    progress = not args.no_progress
    if embedded:
        args.model, args.data, args.eval = DEFAULT_MODEL, DEFAULT_DATA, True
    _check_output(args.output, args.overwrite)
    check_data_spec(args.data)
    base = _config_options(args)
    options = {**base, **dict(args.option)}
    if args.steps is not None:
        options["steps"] = args.steps
    if args.allocation is not None:
        options["allocation"] = args.allocation
    if args.mask_structure != "unstructured":
        options["mask_structure"] = args.mask_structure
    cls = pts_hf.get_sparsifier_class(args.method)
    if args.sparsity is not None:
        options["sparsity"] = args.sparsity
    elif "sparsity" not in options and "mask_structure" not in options:
        options["sparsity"] = 0.9
    try:  # every option checked before anything is loaded
        checked = cls.config_class.from_options(**{**options, "seed": args.seed, "batch_size": args.batch_size})
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from e
    args.sparsity = checked.sparsity

    checkpoint_dir = _checkpoint_dir(args)
    with _stage(f"loading {args.model}"):
        loaded = resolve_model(args.model)
    with _stage(f"loading {args.data} ({args.calib_samples} calibration images" + (", test split)" if args.eval
                                                                                   else ")")):
        calib = load_images(args.data, "train", loaded.inputs, n=args.calib_samples, seed=args.seed)
        images = calib.tensors[0]
        _check_fits(loaded.model, images)
        _check_output_space(args.output, loaded.model)
        test = load_images(args.data, "test", loaded.inputs, n=args.eval_samples, seed=args.seed) if args.eval \
            else None

    print(f"pts-hf: {args.method} on {args.model} ({args.data}), target sparsity {args.sparsity}, "
          f"{len(images)} calibration images", flush=True)
    extra: dict[str, Any] = {"model": args.model, "data": args.data, "calibration_samples": len(images),
                             "command": _command(args)}
    if test is not None:
        with _stage(f"evaluating the dense model on {len(test)} test images", 0.0):
            extra["dense_top1"] = _top1(loaded.model, test, 256, progress)
    torch.manual_seed(args.seed)
    try:
        result = pts_hf.sparsify(loaded.model, images, config=checked, progress=progress,
                                 checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every,
                                 resume_from=args.resume)
    except ValueError as e:
        if args.resume is not None and ("checkpoint" in str(e) or "resume" in str(e)):
            raise CLIError(f"--resume {args.resume}: {e}") from e
        raise
    if test is not None:
        with _stage(f"evaluating the sparse model on {len(test)} test images", 0.0):
            extra["sparse_top1"] = _top1(result.model, test, 256, progress)
        extra["eval_samples"] = len(test)
    report = make_report(result, extra)
    print(format_layer_table(report))
    if test is not None:
        print(f"dense top-1 {extra['dense_top1']:.2f}%  ->  sparse top-1 {extra['sparse_top1']:.2f}% at "
              f"{result.global_sparsity:.4f} sparsity ({result.seconds:.0f} s)")
    if args.output is not None:
        out = _write_output(loaded, result, report, args.output, args.format)
        print(f"wrote {out}/ (weights, report.json, allocation.png)")
    _remove_checkpoint(checkpoint_dir)
    return 0


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``--config`` (empty without one); fills in the method, seed and batch size it sets unless the
    command line gives them."""
    base: dict[str, Any] = {}
    if args.config is not None:
        from pts_hf.config import SparsityConfig

        try:
            recipe = SparsityConfig.from_json(args.config)
        except (OSError, ValueError, TypeError) as e:
            raise CLIError(f"--config {args.config}: {e}") from e
        if args.method is not None and args.method != recipe.method:
            raise CLIError(f"--method {args.method} contradicts --config {args.config} (a {recipe.method} config)")
        args.method = recipe.method
        base = {k: v for k, v in recipe.to_dict().items() if k in type(recipe).field_names()}
    args.method = args.method or "fcpts"
    args.seed = base.pop("seed", 0) if args.seed is None else args.seed
    args.batch_size = base.pop("batch_size", 64) if args.batch_size is None else args.batch_size
    base.pop("seed", None)
    base.pop("batch_size", None)
    return base


def _command(args: argparse.Namespace) -> str:
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if "--resume" in argv:  # the command to continue with names the checkpoint once
        i = argv.index("--resume")
        del argv[i:i + 2]
    return "pts-hf " + " ".join(shlex.quote(a) for a in argv)


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    """The work folder of this run, checked before any work."""
    from pts_hf.checkpoint.output import OutputLocationError, check_output_location
    from pts_hf.resume import STATE_FILE

    if args.checkpoint_dir is not None:
        d = args.checkpoint_dir
    elif args.resume is not None:
        d = args.resume
    elif args.output is not None:
        d = args.output.with_name(args.output.name + ".checkpoint")
    else:
        d = Path(tempfile.gettempdir()) / f"pts-hf-checkpoint-{os.getpid()}"
    if args.resume is not None and not (args.resume / STATE_FILE).is_file():
        raise CLIError(f"--resume {str(args.resume)!r} holds no checkpoint ({STATE_FILE})")
    if args.resume is None and (d / STATE_FILE).is_file():
        raise CLIError(f"{str(d)!r} holds the checkpoint of an earlier run: continue it with --resume {d}, or "
                       "delete the folder")
    try:
        check_output_location(d, overwrite=True, what="checkpoint folder")
    except OutputLocationError as e:
        raise CLIError(str(e)) from e
    return d


def _remove_checkpoint(d: Path) -> None:
    """After success: the work folder's own files, then the folder if that left it empty."""
    from pts_hf.resume import META_FILE, STATE_FILE

    for name in (STATE_FILE, META_FILE):
        (d / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        d.rmdir()


def _measured_sparsity(model: Any) -> float:
    from pts_hf.targets import discover_targets, measure_sparsity

    return measure_sparsity(discover_targets(model))[1]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pts_hf.sources import load_images, resolve_model

    loaded = resolve_model(str(args.model))
    test = load_images(args.data, "test", loaded.inputs, n=args.eval_samples)
    _check_fits(loaded.model, test.tensors[0])
    acc = _top1(loaded.model, test, args.batch_size)
    print(f"top-1 {acc:.2f}% on {len(test)} {args.data} test images; global sparsity "
          f"{_measured_sparsity(loaded.model):.4f}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pts_hf.report import format_layer_table

    folder: Path = args.dir
    if not folder.is_dir():
        raise CLIError(f"{str(folder)!r} is not a folder")
    report_path = folder / "report.json"
    if report_path.is_file():
        print(format_layer_table(json.loads(report_path.read_text())))
        return 0
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise CLIError(f"{str(folder)!r} has neither report.json nor *.safetensors")
    from safetensors.torch import load_file

    zeros = total = 0
    for f in weights:
        for name, t in load_file(str(f)).items():
            if t.ndim >= 2 and t.is_floating_point():
                z = int((t == 0).sum())
                zeros, total = zeros + z, total + t.numel()
                print(f"{name:<60} {t.numel():>10} {z / t.numel():8.4f}")
    print(f"{'all >=2-D weights':<60} {total:>10} {zeros / max(total, 1):8.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pts_hf.sources import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    start = time.perf_counter()
    try:
        from pts_hf.bench_cli import cmd_bench

        commands = {"sparsify": cmd_sparsify, "evaluate": cmd_evaluate, "inspect": cmd_inspect, "bench": cmd_bench}
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = commands[args.command](args)
    except (CLIError, SpecError, FileNotFoundError) as e:
        print(f"pts-hf: error: {e}", file=sys.stderr)
        return getattr(e, "code", 2)
    except KeyboardInterrupt as e:
        from pts_hf.resume import Interrupted

        if isinstance(e, Interrupted) and e.directory is not None:
            print(f"pts-hf: interrupted at step {e.step}; checkpoint in {e.directory}/; continue with: "
                  f"{_command(args)} --resume {shlex.quote(str(e.directory))}", file=sys.stderr)
        else:
            print("pts-hf: interrupted (nothing to resume from: the run had not reached its training loop)",
                  file=sys.stderr)
        return 130
    if args.command == "sparsify":
        print(f"done in {time.perf_counter() - start:.0f} s")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
