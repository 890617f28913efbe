"""The ``nas`` command line: parses arguments and calls library functions, nothing more.

Errors a user can fix arrive as :class:`nas.errors.UserError`; they are printed on one line and the
process exits with status 2, never with a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
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
