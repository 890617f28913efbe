"""The ``nas`` command line: parses arguments and calls library functions, nothing more.

Errors a user can fix arrive as :class:`nas.errors.UserError`; they are printed on one line and the
process exits with status 2, never with a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from nas.errors import UserError


def _kb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KB"


def _spec_from_args(args: argparse.Namespace):
    from nas.spec import load_spec

    spec = load_spec(args.spec)
    changes: dict[str, Any] = {}
    if args.resolution is not None:
        changes["resolution"] = args.resolution
    if args.width is not None:
        changes["width"] = args.width
    if args.classes is not None:
        if spec.head.kind != "classifier":
            raise UserError("--classes", "classes", "a classifier head (this spec has a gaze head)")
        changes["classes"] = args.classes
    try:
        return spec.replace(**changes) if changes else spec
    except UserError as e:
        raise UserError("--spec", e.field, e.expected) from None


def cmd_profile(args: argparse.Namespace) -> int:
    from nas import profile
    from nas.hardware import load_target

    spec = _spec_from_args(args)
    target = load_target(args.constraints) if args.constraints else None
    prof = profile.estimate(spec)
    report = profile.report(prof, target)
    if args.measure:
        report["measured"] = profile.measure_spec(spec).to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(profile.format_report(report, prof))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nas.candidate import CandidateError, evaluate
    from nas.hardware import load_target
    from nas.train import Budget

    spec = _spec_from_args(args)
    target = load_target(args.constraints) if args.constraints else None
    try:
        budget = Budget(epochs=args.epochs, float_epochs=args.float_epochs, batch_size=args.batch_size,
                        learning_rate=args.lr, patience=args.patience, train_limit=args.train_limit)
    except ValueError as e:
        raise UserError("command line", "budget", f"positive epochs, batch size and learning rate ({e})") from None
    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.force:
        raise UserError(str(out), "--out", "a new or empty folder (it holds a trained model; add --force to replace it)")
    verbose = 0 if args.json else (1 if sys.stdout.isatty() else 2)
    try:
        metrics = evaluate(spec, args.dataset, budget, out, seed=args.seed, target=target, verbose=verbose)
    except CandidateError as e:
        print(f"nas train: training failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
        return 0
    name = metrics["metric_name"]
    print(f"spec        {metrics['spec']}")
    print(f"data        {metrics['dataset']} ({metrics['task']})")
    print(f"{name:<12}float {metrics['float_metric']:.4f}   INT8 {metrics['int8_metric']:.4f}"
          f"   (delta {metrics['quantization_delta']:+.4f})")
    print(f"memory      .tflite {metrics['tflite_bytes']:,} B, TFLM arena {metrics['tflm_arena_bytes']:,} B"
          f" (estimated {metrics['estimated_memory_bytes']:,} B)")
    print("time        " + ", ".join(f"{k} {v:.1f}s" for k, v in metrics["timings"].items())
          + f"; total {metrics['seconds']:.1f} s")
    print(f"wrote       {out}/model_int8.tflite, model_qat.h5, metrics.json")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas.convert import evaluate_file

    result = evaluate_file(args.model, args.dataset, split=args.split, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['metric_name']}: {result['int8_metric']:.4f} on {result['samples']} samples "
              f"({result['dataset']}, split {result['split']}) with the INT8 model {result['model']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nas", description="Hardware-aware NAS and INT8 compression for tiny vision models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    pr = sub.add_parser("profile", help="MACs, params, flash, peak SRAM, latency and energy of a spec, before training")
    pr.add_argument("--spec", required=True, help="preset name, spec string, or a JSON/YAML spec file")
    pr.add_argument("--resolution", type=int, help="override the input resolution")
    pr.add_argument("--width", type=float, help="override the width multiplier")
    pr.add_argument("--classes", type=int, help="override the classifier's number of classes")
    pr.add_argument("--constraints", help="constraint file: a path or a shipped name such as imx500.yaml")
    pr.add_argument("--measure", action="store_true",
                    help="also convert the untrained model to INT8 and measure its .tflite size and TFLM arena")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(func=cmd_profile)

    tr = sub.add_parser("train", help="train a spec with INT8 QAT, convert to full-integer TFLite, evaluate as INT8")
    tr.add_argument("--spec", required=True, help="preset name, spec string, or a JSON/YAML spec file")
    tr.add_argument("--resolution", type=int, help="override the input resolution")
    tr.add_argument("--width", type=float, help="override the width multiplier")
    tr.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    tr.add_argument("--dataset", default="mnist", help="mnist (default, embedded), faces, gaze-synthetic, or a folder")
    tr.add_argument("--epochs", type=int, default=3, help="QAT epochs (default 3)")
    tr.add_argument("--float-epochs", type=int, default=0, help="float epochs before QAT (default 0)")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=5e-3, help="peak learning rate of the cosine schedule")
    tr.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    tr.add_argument("--train-limit", type=int, help="use at most this many training samples")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--constraints", help="also report latency and energy on this target")
    tr.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    tr.add_argument("--force", action="store_true", help="replace a trained model in --out")
    tr.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate an INT8 .tflite (or a folder holding model_int8.tflite) on a data set")
    ev.add_argument("model", help="a .tflite file or a folder with model_int8.tflite")
    ev.add_argument("--dataset", required=True, help="mnist, faces, gaze-synthetic, or a folder")
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which split (default test; 'all' for a folder the model never saw)")
    ev.add_argument("--seed", type=int, default=0, help="split seed (must match training's to reuse its test split)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UserError as e:
        print(f"nas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
