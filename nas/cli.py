"""The ``nas`` command line: parses arguments and calls library functions, nothing more.

Errors a user can fix arrive as :class:`nas.errors.UserError`; they are printed on one line and the
process exits with status 2, never with a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from nas.budget import RECIPES
from nas.errors import UserError
from nas.finalize import DEFAULT_EPOCHS as FINALIZE_EPOCHS
from nas.formatting import kb
from nas.metrics import split_name

CACHE_DIR_HELP = ("where image folders are decoded once (a uint8 cache every command and worker reuses; default "
                  "$TINYNAS_CACHE_DIR or ~/.cache/tinynas/data)")


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

    target = load_target(args.constraints) if args.constraints else None
    if args.model is not None:
        return _profile_tflite(args, target)
    if args.spec is None:
        raise UserError("nas profile", "--spec", "a spec (preset, string or file) or a MODEL.tflite to profile")
    spec = _spec_from_args(args)
    prof = profile.estimate(spec)
    report = profile.report(prof, target)
    if args.measure:
        from nas.tf import convert  # TensorFlow only when a conversion is asked for

        report["measured"] = convert.measure_spec(spec).to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(profile.format_report(report, prof))
    return 0


def _profile_tflite(args: argparse.Namespace, target: Any) -> int:
    from nas.tflite_report import format_tflite_report, tflite_report

    given = [f for f, v in (("--spec", args.spec), ("--resolution", args.resolution), ("--width", args.width),
                            ("--classes", args.classes)) if v is not None]
    if given:
        raise UserError("nas profile", given[0], f"left out: {args.model} is a converted model, its graph is fixed")
    path = Path(args.model)
    if not path.is_file():
        raise UserError(str(path), "MODEL", "an existing .tflite file")
    data = path.read_bytes()
    if data[4:8] != b"TFL3":
        raise UserError(str(path), "MODEL", "a TensorFlow Lite flatbuffer (file identifier TFL3)")
    rep = tflite_report(data, str(path), target)
    print(json.dumps(rep, indent=2) if args.json else format_tflite_report(rep))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a per-op latency profile to the user's timings; write a constraint file that loads like any other."""
    from nas import calibrate
    from nas.hardware import load_target

    target = load_target(args.constraints)
    csv_path = Path(args.measurements)
    rows = calibrate.read_measurements(csv_path)
    cal = calibrate.fit(rows, target, args.fit)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(str(out), "--out", "a new file (it exists; --force replaces it)")
    try:
        out.write_text(calibrate.constraints_yaml(cal, target, csv_path), encoding="utf-8")
    except OSError as e:
        raise UserError(str(out), "--out", f"a writable path ({e.strerror or e})") from None
    load_target(str(out))  # what was written must load everywhere a constraint file does
    print(f"fit         {cal.mode} on {len(rows)} row(s), from {target.path} ({target.latency_model} model)")
    print(f"{'model':<50}{'measured':>12}{'predicted':>12}{'residual':>10}")
    for r, p in zip(rows, cal.predicted_ms):
        print(f"{r.model[-50:]:<50}{r.latency_ms:>9.3f} ms{p:>9.3f} ms{100 * (p / r.latency_ms - 1):>+9.1f}%")
    print("coefficients " + ", ".join(f"{k} {v:.4g}" for k, v in cal.profile.coefficients().items()))
    print(f"power       {cal.power_mw:.4g} mW\nwrote       {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nas.tf.candidate import CandidateError, evaluate
    from nas.hardware import load_target
    from nas.budget import Budget

    spec = _spec_from_args(args)
    target = load_target(args.constraints) if args.constraints else None
    try:
        budget = Budget(epochs=args.epochs, qat_epochs=args.qat_epochs, batch_size=args.batch_size,
                        learning_rate=args.lr, patience=args.patience, train_limit=args.train_limit,
                        recipe=args.recipe)
    except ValueError as e:
        raise UserError("command line", "budget", str(e)) from None
    from nas.rundir import TrialFiles

    out = Path(args.out)
    files = TrialFiles(out)
    if files.finished() and not args.force:
        raise UserError(str(out), "--out", "a new or empty folder (it holds a trained model; add --force to "
                                           "replace it)")
    bar = _TrainBar() if sys.stderr.isatty() else _TrainLog()
    try:
        metrics = evaluate(spec, args.dataset, budget, out, seed=args.seed, target=target, progress=bar,
                           report="test")
    except CandidateError as e:
        bar.close()
        print(f"nas train: training failed: {e}", file=sys.stderr)
        return 1
    bar.close()
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
        return 0
    name = metrics["metric_name"]
    print(f"spec        {metrics['spec']}")
    print(f"data        {metrics['dataset']} ({metrics['task']}; {metrics['split']})")
    print(f"training    {metrics['plan_text']}")
    for a in metrics["attempts"][:-1]:
        print(f"retried     {a['outcome']} at peak learning rate {a['peak_lr']:.3g}")
    print(f"{name:<12}INT8 {_with_interval(metrics['int8_metric'], metrics.get('int8_interval'))}, float "
          f"{_with_interval(metrics['float_metric'], metrics.get('float_interval'))} on the "
          f"{metrics['metric_samples']:,} {metrics['metric_split']} "
          f"samples (delta {metrics['quantization_delta']:+.4f}); validation float {metrics['val_float_metric']:.4f}")
    print(f"memory      .tflite {metrics['tflite_bytes']:,} B, TFLM arena {metrics['tflm_arena_bytes']:,} B"
          f" (estimated {metrics['estimated_memory_bytes']:,} B)")
    print("time        " + ", ".join(f"{k} {v:.1f}s" for k, v in metrics["timings"].items())
          + f"; total {metrics['seconds']:.1f} s")
    print(f"wrote       {files.tflite}, {files.keras.name}, {files.metrics.name}")
    return 0


def _with_interval(value: float, interval: Sequence[float] | None) -> str:
    """``0.6012 (95% CI 0.5871-0.6150)``: the figure with its Wilson / bootstrap interval when there is one."""
    return f"{value:.4f}" + (f" (95% CI {interval[0]:.4f}-{interval[1]:.4f})" if interval else "")


def _train_progress_text(p) -> str:
    val = "" if p.val_metric is None else f", val {p.metric_name} {p.val_metric:.4f}"
    loss = "" if p.loss is None else f" loss {p.loss:.4f}"
    retry = " (retry at a lower learning rate)" if p.attempt > 1 else ""
    return f"{p.phase} epoch {p.epoch}/{p.phase_epochs}{loss}{val}{retry}"


class _TrainBar:
    """tqdm bar over a training run's steps (float and QAT phases together), with loss, validation metric, ETA."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.attempt = 0

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None or p.attempt != self.attempt:
            self.close()
            self.attempt = p.attempt
            self.bar = tqdm(total=p.total_steps, unit="step", desc="train", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(p.step - self.bar.n)
        self.bar.set_postfix_str(_train_progress_text(p), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _TrainLog:
    """Progress for a pipe or a file: one line per epoch, with the elapsed time and the ETA."""

    def __call__(self, p) -> None:
        if p.val_metric is None:
            return
        eta = "" if p.eta_s is None else f", ETA {p.eta_s:.0f} s"
        print(f"train: {_train_progress_text(p)} | step {p.step}/{p.total_steps}, {p.elapsed_s:.0f} s{eta}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to close: every line is complete when written."""


def resolution_line(space: dict[str, Any]) -> str:
    """The input resolutions the run samples, and why some of the space's are left out."""
    used, dropped = space.get("resolutions") or [], space.get("resolutions_left_out") or []
    text = f"input resolutions {', '.join(map(str, used))} px"
    if not dropped:
        return text
    return text + (f"; {', '.join(map(str, dropped))} px left out: the data is {space.get('native_resolution')} px "
                   f"and larger inputs only upsample it (write 'upsample: true' in the space to search them)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas.tf.convert import evaluate_file

    result = evaluate_file(args.model, args.dataset, split=args.split, seed=args.seed, input_range=args.input_range)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['metric_name']}: {_with_interval(result['int8_metric'], result['int8_interval'])} on "
              f"{result['samples']} samples ({result['dataset']}, split {result['split']}) with the INT8 model "
              f"{result['model']} (input pixels {result['input_range']})")
    return 0


# -- nas search / nas pareto ---------------------------------------------------------------------------

_FROM_RUN_DIR = ("constraints", "space", "dataset", "epochs", "train_limit", "lr", "sampler", "seed", "run_dir",
                 "fidelity", "eta", "rungs")


def _progress_text(s) -> str:
    best = "-" if s.best_metric is None else f"{s.best_metric:.4f}"
    energy = "-" if s.best_energy_mj is None else f"{s.best_energy_mj:.3g} mJ"
    rungs = (" | per rung " + " ".join(f"r{k}:{n}" for k, n in s.rungs.items())) if s.rungs else ""
    return (f"feasible {s.feasible}, rejected {s.rejected}, failed {s.failed}, running {s.running} | best "
            f"{s.metric_name} {best}, memory {kb(s.best_memory_bytes)}, energy {energy}{rungs}")


def _count(text: str) -> int:
    from nas.formatting import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise UserError("--epoch-images", "epoch_images", str(e)) from None


def _duration(text: str) -> float:
    from nas.formatting import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise UserError("--time", "time", str(e)) from None


def _time_left(deadline: float | None) -> str:
    if deadline is None:
        return ""
    from nas.results import format_duration

    return f" | time left {format_duration(max(0.0, deadline - time.time()))}"


class _SearchBar:
    """tqdm bar for a search: trials used / budget, feasible vs rejected, the best of each objective, ETA; and
    the time left of a --time budget."""

    def __init__(self, deadline: float | None = None, open_ended: bool = False) -> None:
        self.bar: Any = None  # a tqdm bar once the first summary comes (tqdm ships no type information)
        self.used = 0
        self.deadline = deadline
        self.open_ended = open_ended  # --time without --trials: a count, no total

    def __call__(self, s) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.used = min(s.used, s.budget)
            self.bar = tqdm(total=None if self.open_ended else s.budget, initial=self.used, unit="trial",
                            desc="search", dynamic_ncols=True, file=sys.stderr)
        if not self.open_ended and self.bar.total != s.budget:
            self.bar.total = s.budget
        used = min(s.used, s.budget)
        if used > self.used:
            self.bar.update(used - self.used)
            self.used = used
        self.bar.set_postfix_str(_progress_text(s) + _time_left(self.deadline))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _SearchLog:
    """Progress for a pipe or a file (``nas search ... 2>&1 | tee log``): a tqdm bar would write a line every
    refresh; this writes one line per finished candidate, and at most every ``quiet_s`` seconds otherwise."""

    def __init__(self, quiet_s: float = 30.0, deadline: float | None = None, open_ended: bool = False) -> None:
        self.quiet_s = quiet_s
        self.deadline = deadline
        self.open_ended = open_ended
        self.used: int | None = None
        self.last = 0.0

    def __call__(self, s) -> None:
        import time

        now = time.monotonic()
        if s.used == self.used and now - self.last < self.quiet_s:
            return
        self.used, self.last = s.used, now
        count = str(s.used) if self.open_ended else f"{min(s.used, s.budget)}/{s.budget}"
        print(f"search: {count} trained or failed | {_progress_text(s)}{_time_left(self.deadline)}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to close: every line is complete when written."""


def cmd_search(args: argparse.Namespace) -> int:
    from nas import results, search

    started = time.time()  # a --time budget counts from here: loading the data is part of it
    command = ["nas", *sys.argv[1:]]
    time_s = _duration(args.time) if args.time is not None else None
    epoch_images = _count(args.epoch_images) if args.epoch_images is not None else None
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in _FROM_RUN_DIR if getattr(args, k) is not None]
        if given:
            raise UserError("--resume", given[0], "left out: a resumed search takes it from the run directory "
                                                  "(only --trials, --workers, --storage and "
                                                  "--max-consecutive-failures may be given)")
        run_dir = search.resume_run(args.resume, trials=args.trials, workers=args.workers, storage=args.storage,
                                    command=command, max_consecutive_failures=args.max_consecutive_failures,
                                    time_s=time_s, started_at=started, epoch_images=epoch_images)
        run = results.open_run(run_dir, args.storage)
        plan = search.plan_workers(args.workers, run.budget - run.summary().used)
        print(f"Resuming {run_dir}")
    else:
        if not args.constraints:
            raise UserError("nas search", "--constraints", "a constraint file (e.g. mcu_vww.yaml, imx500.yaml), "
                                                           "or --resume RUN_DIR")
        req = search.SearchRequest(
            constraints=args.constraints, space=args.space, dataset=args.dataset,
            trials=(args.trials if args.trials is not None else
                    search.TIMED_TRIALS if time_s is not None or epoch_images else search.DEFAULT_TRIALS),
            time_s=time_s, started_at=started, epoch_images=epoch_images,
            epochs=search.DEFAULT_EPOCHS if args.epochs is None else args.epochs, train_limit=args.train_limit,
            learning_rate=args.lr, sampler=args.sampler or "tpe", workers=args.workers, storage=args.storage,
            run_dir=args.run_dir, seed=0 if args.seed is None else args.seed, command=tuple(command),
            max_consecutive_failures=(search.DEFAULT_MAX_CONSECUTIVE_FAILURES if args.max_consecutive_failures is None
                                      else args.max_consecutive_failures),
            fidelity=args.fidelity or "none", eta=3 if args.eta is None else args.eta,
            rungs=3 if args.rungs is None else args.rungs)
        run_dir = search.create_run(req)
        run = results.open_run(run_dir, args.storage)
        cfg = run.config
        budget = cfg.budget
        plan = search.plan_workers(req.workers, run.budget)  # a new run: every candidate is still to train
        print(f"Run directory: {run_dir}")
        print(f"  data {cfg.dataset}, space {cfg.space['name']}, target "
              f"{cfg.target['name']}; "
              + (f"candidates for {results.format_duration(time_s)}" + (f" (at most {req.trials})" if args.trials
                                                                         else "")
                 if time_s is not None else f"{req.trials} candidates to train" if args.trials or not epoch_images
                 else "candidates until the compute budget is used")
              + f" ({budget['epochs']} training epoch{'' if budget['epochs'] == 1 else 's'}"
              + (f", {budget['train_limit']} training samples" if budget.get("train_limit") else "")
              + (f", learning rate {budget['learning_rate']:g}" if budget.get("learning_rate") else "")
              + f"), sampler {req.sampler}, {plan.workers} worker(s)")
        if epoch_images:
            print(f"  compute budget: {epoch_images:,} training images over all candidates (epochs x images)")
        if cfg.fidelity:
            print(f"  multi-fidelity (ASHA): {cfg.fidelity['rungs']} rungs, the best 1/{cfg.fidelity['eta']} of each "
                  f"continue; rungs below the top are judged on float validation accuracy and estimated memory")
        print("  " + resolution_line(cfg.space))
    for note in plan.notes():
        print(f"nas search: warning: {note}", file=sys.stderr)
    cfg = results.open_run(run_dir, args.storage).config
    deadline = cfg.sessions[-1].get("deadline")
    open_ended = deadline is not None and int(cfg.trials) >= search.TIMED_TRIALS
    bar = (_SearchBar(deadline, open_ended) if sys.stderr.isatty()
           else _SearchLog(deadline=deadline, open_ended=open_ended))
    try:
        outcome = search.execute(run_dir, workers=args.workers, storage=args.storage, progress=bar)
    except KeyboardInterrupt:
        bar.close()
        print(f"nas search: interrupted; finished trials are kept. Continue with: nas search --resume {run_dir}",
              file=sys.stderr)
        return 130
    except (search.StorageUnavailable, search.WorkerBug) as e:
        bar.close()
        for err in e.worker_errors:
            print(f"nas search: {err}", file=sys.stderr)
        print(f"nas search: error: {e}", file=sys.stderr)
        return 1
    bar.close()
    s = outcome.summary
    print(f"Run directory: {run_dir}")
    print(f"  {s.trained} trained ({s.feasible} feasible with measured memory), {s.rejected} rejected before "
          f"training (never trained), {s.failed} failed, {s.interrupted} interrupted; "
          f"training time {results.format_duration(s.train_seconds)}")
    if s.best_metric is not None:
        print(f"  best {s.metric_name} {s.best_metric:.4f}; smallest memory {kb(s.best_memory_bytes)}; lowest "
              f"energy {s.best_energy_mj:.4g} mJ; {s.pareto} Pareto-optimal trial(s)")
    if outcome.stopped and not outcome.failed_in_a_row:
        print(f"  {outcome.stopped}")
    for err in outcome.worker_errors:
        print(f"nas search: {err}", file=sys.stderr)
    print(f"Next: nas pareto {run_dir}          (the Pareto-optimal feasible models; --json for scripts)")
    print(f"      nas finalize {run_dir}        (retrain them with a full budget; INT8 on the test split)")
    if s.budget >= search.TIMED_TRIALS:
        print(f"      nas search --resume {run_dir} --time 10m   (search for 10 more minutes)")
    elif s.used < s.budget:
        print(f"      nas search --resume {run_dir}   (train the remaining {s.budget - s.used})")
    else:
        print(f"      nas search --resume {run_dir} --trials {s.budget * 2}   (train more)")
    if outcome.failed_in_a_row:
        print(f"nas search: error: {outcome.stopped}", file=sys.stderr)
        return 1
    return 1 if outcome.worker_errors and s.used < s.budget else 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from nas import results

    from nas import finalize

    run = results.open_run(args.run_dir, args.storage)
    report = results.pareto_report(run)
    models = finalize.read_finalized(run.path)
    report["finalized"] = [m.to_dict() for m in models]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(results.format_pareto(report))
    if models:
        print("\nFinalized by nas finalize (retrained with a full budget; nas export ships these):")
        print(format_finalized(models, run.metric[1]))
    elif report["pareto"]:
        print(f"\nThese are search-time figures. Next: nas finalize {run.path}   (retrain the front, report it on "
              f"the test split)")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from nas import finalize, results
    from nas.budget import Budget
    from nas.errors import CandidateError

    run = results.open_run(args.run_dir, args.storage)
    records = run.trials()
    picked = finalize.select(run, records, top=args.top, trials=args.trials)
    if args.seeds < 1:
        raise UserError("--seeds", "seeds", f"a positive number of training seeds, got {args.seeds}")
    try:
        budget = Budget(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                        train_limit=args.train_limit, recipe=args.recipe)
    except ValueError as e:
        raise UserError("command line", "budget", str(e)) from None
    seeds = list(range(args.seeds))
    print(f"Finalizing trial(s) {', '.join(str(r.number) for r in picked)} of {run.path} with {args.epochs} epochs"
          f" ({'all training samples' if args.train_limit is None else f'{args.train_limit} training samples'}), "
          f"seed(s) {', '.join(map(str, seeds))}; INT8 figures on the test split", file=sys.stderr)
    bars: list[Any] = []

    def progress(i: int, total: int, trial: int, seed: int) -> Any:
        print(f"finalize: model {i + 1}/{total}: trial {trial}, seed {seed}", file=sys.stderr, flush=True)
        bars.append(_TrainBar() if sys.stderr.isatty() else _TrainLog())
        return bars[-1]

    try:
        models = finalize.finalize(run, picked, budget, seeds, force=args.force, progress=progress)
    except CandidateError as e:
        for b in bars:
            b.close()
        print(f"nas finalize: training failed: {e}; finished models are kept, run the same command to continue",
              file=sys.stderr)
        return 1
    mine = [m for m in models if m.trial in {r.number for r in picked} and m.seed in seeds]
    if args.json:
        print(json.dumps([m.to_dict() for m in mine], indent=2))
        return 0
    print(format_finalized(mine, run.metric[1]))
    print(f"Next: nas export {run.path} --best {run.metric[0]} --out bundles   (ships the finalized model)")
    return 0


def format_finalized(models: Sequence[Any], higher_is_better: bool) -> str:
    """The finalized models: test figures with their intervals, and which seed of each trial ships (by
    validation). 'tied': the test interval overlaps the best test figure's, so the two are not ranked."""
    from nas.finalize import chosen
    from nas.metrics import intervals_overlap

    if not models:
        return "no finalized model"
    ships = {m.path for m in chosen(models, higher_is_better).values()}
    top = max(models, key=lambda m: m.test_metric if higher_is_better else -m.test_metric)
    name = models[0].metric_name
    lines = [f"INT8 {name} on the test split (n = {models[0].test_samples:,}; 95% intervals) and on the validation "
             f"split; 'ships': the seed nas export takes (best validation); 'tied': the test interval overlaps the "
             f"best's",
             f"{'trial':>5}  {'seed':>4}  {'val ' + name:>13}  {'test ' + name:>14}  {'95% interval':>15}  "
             f"{'vs best':>7}  {'memory':>10}  {'flash':>10}  {'MACs':>9}  {'fits':>4}  ships"]
    for m in models:
        ci = f"{m.test_interval[0]:.4f}-{m.test_interval[1]:.4f}" if m.test_interval else "-"
        vs = "best" if m is top else ("tied" if m.test_interval and top.test_interval
                                       and intervals_overlap(m.test_interval, top.test_interval) else "worse")
        lines.append(f"{m.trial:>5}  {m.seed:>4}  {m.val_metric:>13.4f}  {m.test_metric:>14.4f}  {ci:>15}  {vs:>7}  "
                     f"{kb(m.memory_bytes):>10}  {kb(m.tflite_bytes):>10}  {m.macs / 1e6:>7.2f} M  "
                     f"{'yes' if m.feasible else 'NO':>4}  {'yes' if m.path in ships else ''}")
    return "\n".join(lines)


def _add_search_parsers(sub) -> None:
    se = sub.add_parser(
        "search", help="constrained multi-objective search: trains only candidates that fit the target",
        description="Search a space for INT8 models that fit a target: every sampled candidate is profiled first; "
                    "those over a limit are rejected without training, the rest are trained with INT8 QAT, "
                    "converted, evaluated as INT8 and measured. With only --constraints: a run of about 7 minutes on "
                    "the embedded MNIST digits.")
    se.add_argument("--constraints", help="constraint file: a path or a shipped name (mcu_vww.yaml, imx500.yaml)")
    se.add_argument("--space", help="search-space file: a path or a shipped name (default: mobilenetv3.yaml for "
                                    "classification, tinytracker.yaml for gaze data)")
    se.add_argument("--dataset", help="mnist (default, embedded), faces, gaze-synthetic, or a folder")
    se.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    se.add_argument("--trials", type=int, help="candidates to train; rejected ones do not count (default 20, or "
                                               "no limit but the time with --time)")
    se.add_argument("--epoch-images", help="compute budget: training images summed over epochs, rungs and "
                                           "candidates, e.g. 5M: no candidate starts once this session trained "
                                           "that many (candidates in flight finish)")
    se.add_argument("--time", help="wall-clock budget, e.g. 10m, 1h30m: no candidate starts after it (nor when less "
                                   "is left than a median candidate took); the command's start counts")
    se.add_argument("--epochs", type=int, help="training epochs per candidate, float then QAT (default 2: one of "
                                               "each)")
    se.add_argument("--lr", type=float, help="peak learning rate of each candidate (default: the recipe's, 3e-3 "
                                             "at batch 128, scaled to the batch)")
    se.add_argument("--train-limit", type=int,
                    help="use at most this many training samples per candidate (quick runs and tests; default: "
                         "all, or 2000 for the default data set)")
    se.add_argument("--sampler", choices=["tpe", "nsga2", "random"],
                    help="tpe (default: multi-objective TPE, constraint-aware), nsga2, or random")
    se.add_argument("--fidelity", choices=["asha", "none"],
                    help="asha: every candidate starts with a small share of its budget and the best 1/eta of each "
                         "rung continue from their weights (asynchronous successive halving); none (default): every "
                         "candidate gets its full budget")
    se.add_argument("--eta", type=int, help="--fidelity asha: keep the best 1/eta of each rung (default 3)")
    se.add_argument("--rungs", type=int, help="--fidelity asha: fidelity levels, the top one the full candidate "
                                              "budget (default 3)")
    se.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1; at most "
                                                           "one per candidate left to train)")
    se.add_argument("--max-consecutive-failures", type=int,
                    help="stop the search after this many candidates failed in a row (NaN loss, out of memory, "
                         "conversion refused; default 5)")
    se.add_argument("--storage", help="Optuna storage URL shared by workers on many machines, e.g. "
                                      "postgresql+psycopg2://user@host:5432/db (default: RUN_DIR/study.db)")
    se.add_argument("--run-dir", help="new or empty run directory (default runs/<space>-<target>-<data>-<time>)")
    se.add_argument("--seed", type=int, help="seed for data splits, training and the sampler (default 0)")
    se.add_argument("--resume", metavar="RUN_DIR",
                    help="continue a run: cut-off trials are marked failed and the remaining budget is trained")
    se.set_defaults(func=cmd_search)

    pa = sub.add_parser("pareto", help="the Pareto-optimal feasible trials of a search run")
    pa.add_argument("run_dir", help="a run directory made by nas search")
    pa.add_argument("--storage", help="storage URL with a password, when run.yaml's needs one")
    pa.add_argument("--json", action="store_true", help="print one JSON object")
    pa.set_defaults(func=cmd_pareto)

    fi = sub.add_parser("finalize", help="retrain a run's best candidates with a full budget; report them on the "
                                         "test split",
                        description="Retrain the Pareto-optimal feasible trials of a search run (or --top K by "
                                    "validation metric, or --trials N ...) from scratch with a full budget and one "
                                    "or more seeds, as INT8 QAT; convert, measure, check the limits and evaluate "
                                    "the INT8 model on the test split. Models go to RUN_DIR/finalized/; nas "
                                    "export, nas pareto and the explorer prefer them. Run it again to continue.")
    fi.add_argument("run_dir", help="a run directory made by nas search")
    which = fi.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, help="the K feasible trials with the best validation metric")
    which.add_argument("--trials", type=int, nargs="+", metavar="N", help="these trial numbers")
    fi.add_argument("--epochs", type=int, default=FINALIZE_EPOCHS,
                    help=f"training epochs in all, float then QAT (default {FINALIZE_EPOCHS})")
    fi.add_argument("--seeds", type=int, default=1, help="train each trial with seeds 0..N-1 (default 1)")
    fi.add_argument("--train-limit", type=int, help="use at most this many training samples (default: all)")
    fi.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    fi.add_argument("--batch-size", type=int, help="default: the recipe's (up to 128)")
    fi.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled to the batch)")
    fi.add_argument("--recipe", choices=sorted(RECIPES), default="default", help="training recipe (default: default)")
    fi.add_argument("--force", action="store_true", help="retrain models finalized before with another budget")
    fi.add_argument("--storage", help="storage URL with a password, when run.yaml's needs one")
    fi.add_argument("--json", action="store_true", help="print the finalized models as JSON")
    fi.set_defaults(func=cmd_finalize)


# -- nas export / nas verify / nas imx500 ---------------------------------------------------------------


def _bundle_summary(bundle: Path) -> list[str]:
    """A few lines about a written bundle, read back from its metadata.json."""
    meta = json.loads((bundle / "metadata.json").read_text())
    mem, m = meta["memory"], meta["metrics"]
    arena = mem["arena"]
    lines = [f"bundle  {bundle}",
             f"  {m['name']} INT8 {_with_interval(m['int8'], m.get('int8_interval'))} on the "
             f"{split_name(m.get('split'))}" + (f" (n = {m['samples']:,})" if m.get("samples") else "")
             + f", float {m['float']:.4f}; "
             f".tflite {mem['measured']['tflite_bytes']:,} B; "
             f"kTensorArenaSize {arena['kTensorArenaSize']:,} B "
             f"(measured minimum {arena['measured_minimum_bytes']:,} B "
             f"+ {arena['margin_bytes']:,} B margin)"]
    tgt = meta.get("target")
    if tgt:
        broken = [f"{r['name']} {r['value']:,.4g} > {r['limit']:,.4g}" for r in tgt["limits"] if not r["ok"]]
        lines.append(f"  target {tgt['name']}: "
                     + ("every limit met" if not broken else "LIMITS BROKEN: " + ", ".join(broken))
                     + f"; {tgt['latency_ms']:.3f} ms, {tgt['energy_mj']:.4g} mJ per frame")
    imx = meta.get("imx500")
    if imx and imx.get("status") == "converted":
        rep = imx["memory_report"]
        lines.append(f"  IMX500: packerOut.zip; converter Memory Usage {rep['usage_bytes']:,} B of "
                     f"{rep['available_bytes']:,} B, Fit In Chip: {rep['fit_in_chip']} (our estimate "
                     f"{imx['estimated_onchip_bytes']:,} B)")
    elif imx:
        lines.append(f"  IMX500 part not added ({imx['reason']}): run `nas imx500 setup`, "
                     "then export again with --force")
    return lines


def cmd_export(args: argparse.Namespace) -> int:
    from nas import export
    from nas.imx500 import Imx500Error

    try:
        bundles = export.export(args.source, args.out, trial=args.trial, pareto=args.pareto, best=args.best,
                                name=args.name, constraints=args.constraints, storage=args.storage, force=args.force,
                                zip_bundle=args.zip, imx500=args.imx500, imx500_venv=args.imx500_venv,
                                samples=args.samples)
    except Imx500Error as e:
        print(f"nas export: IMX500 conversion failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"bundle": str(b), "zip": str(b.with_name(b.name + ".zip")) if args.zip else None,
                           "metadata": json.loads((b / "metadata.json").read_text())} for b in bundles], indent=2))
        return 0
    for b in bundles:
        print("\n".join(_bundle_summary(b)))
        if args.zip:
            print(f"  zip     {b.with_name(b.name + '.zip')}")
    print("Check with: " + "; ".join(f"nas verify {b}" for b in bundles))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from nas.export import VerifyError, verify_bundle

    try:
        v = verify_bundle(args.bundle)
    except VerifyError as e:
        print(f"nas verify: FAILED {args.bundle}: {e}", file=sys.stderr)
        return 1
    print(f"OK {v.bundle}: sha256 of {len(v.files_checked)} files match metadata.json; the C array equals "
          f"model_int8.tflite ({v.tflite_bytes:,} B, sha256 {v.sha256[:16]}...); TFLM with kTensorArenaSize "
          f"{v.arena_size:,} B reproduced {v.samples}/{v.samples} recorded outputs")
    return 0


def cmd_imx500(args: argparse.Namespace) -> int:
    from nas import imx500

    if args.imx500_command == "setup":
        try:
            status = imx500.setup(args.venv, python=args.python, progress=lambda msg: print(msg, flush=True))
        except imx500.Imx500Error as e:
            print(f"nas imx500 setup: {e}", file=sys.stderr)
            return 1
    else:
        status = imx500.check(args.venv)
    if getattr(args, "json", False):
        print(json.dumps(status.to_dict(), indent=2))
        return 0 if status.ok else 1
    print(f"IMX500 converter environment: {status.venv}")
    for pkg, ver in sorted(status.versions.items()):
        print(f"  {pkg} {ver}")
    print(f"  java: {status.java or '-'}")
    if status.ok:
        print("ready: nas export adds packerOut.zip and the memory report for runtime: imx500 targets")
        return 0
    for problem in status.problems:
        print(f"nas imx500 {args.imx500_command}: {problem}", file=sys.stderr)
    return 1


def _add_export_parsers(sub) -> None:
    ex = sub.add_parser(
        "export", help="write deployable bundles (INT8 .tflite, C array, arena size, model card, IMX500 package)",
        description="Export trained models as bundles a firmware engineer can use as they are. SOURCE is a run "
                    "directory (choose trials with --trial, --pareto or --best) or one folder written by nas train.")
    ex.add_argument("source", help="a run directory made by nas search, or a folder made by nas train --out")
    pick = ex.add_mutually_exclusive_group()
    pick.add_argument("--trial", type=int, help="export this trial number of the run")
    pick.add_argument("--pareto", action="store_true", help="export every Pareto-optimal feasible trial")
    pick.add_argument("--best", metavar="METRIC",
                      help="export the best feasible trial by int8_metric (or the task metric's name, e.g. accuracy), "
                           "float_metric, memory_bytes, energy_mj, latency_ms, macs or tflite_bytes")
    ex.add_argument("--out", default="bundles", help="folder the bundles go into (default ./bundles)")
    ex.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    ex.add_argument("--name", help="bundle folder name (default trial-<n>, or the trained folder's name); "
                                   "a prefix when several trials are exported")
    ex.add_argument("--constraints", help="constraint file to check against (default: the run's own; needed for "
                                          "latency, energy and limits of a nas train folder)")
    ex.add_argument("--storage", help="storage URL with a password, when run.yaml's needs one")
    ex.add_argument("--force", action="store_true", help="replace existing bundles (and zips) of the same name")
    ex.add_argument("--zip", action="store_true", help="also write BUNDLE.zip next to each bundle folder")
    ex.add_argument("--imx500", choices=["auto", "on", "off"], default="auto",
                    help="IMX500 converter output: auto (for runtime: imx500 targets, when `nas imx500 setup` was "
                         "run), on (required), off")
    ex.add_argument("--imx500-venv", help="the converter's environment (default $TINYNAS_IMX500_VENV or "
                                          "~/.cache/tinynas/imx500-venv)")
    ex.add_argument("--samples", type=int, default=8,
                    help="test inputs stored with their outputs for nas verify (default 8)")
    ex.add_argument("--json", action="store_true", help="print the bundles' metadata as JSON")
    ex.set_defaults(func=cmd_export)

    ve = sub.add_parser("verify", help="re-check a bundle: sha256, C array = .tflite, TFLM outputs on its samples",
                        description="Runs the bundle's INT8 model in the TFLM host interpreter with the bundle's "
                                    "kTensorArenaSize on the stored sample inputs and compares every output with the "
                                    "recorded one; also checks file hashes and the C array. Exit 1 on any mismatch.")
    ve.add_argument("bundle", help="a bundle folder written by nas export")
    ve.set_defaults(func=cmd_verify)

    im = sub.add_parser("imx500", help="the Sony IMX500 converter's own Python environment (setup / check)")
    isub = im.add_subparsers(dest="imx500_command", metavar="ACTION")
    isub.required = True
    for action, text in (("setup", "create the converter venv (python3.11, imx500-converter[tf] 3.19, TF 2.15, "
                                   "MCT 2.5) and check it"),
                         ("check", "check the converter venv and Java 17; exit 1 with the problems if not ready")):
        a = isub.add_parser(action, help=text)
        a.add_argument("--venv", help="environment folder (default $TINYNAS_IMX500_VENV or "
                                      "~/.cache/tinynas/imx500-venv)")
        if action == "setup":
            a.add_argument("--python", help="Python 3.10/3.11 interpreter for the venv (default python3.11)")
        a.add_argument("--json", action="store_true", help="print the status as JSON")
        a.set_defaults(func=cmd_imx500)


# -- nas app (the Pareto explorer; nas/app/explorer.py) -------------------------------------------------


def cmd_app(args: argparse.Namespace) -> int:
    """Replace this process with ``streamlit run nas/app/explorer.py -- SOURCE`` (Ctrl-C and kill reach Streamlit).

    The script is found inside the installed package, so ``nas app`` works from a wheel as from a checkout."""
    import os
    from importlib import resources

    script = Path(str(resources.files("nas.app") / "explorer.py"))
    if not script.is_file():
        raise UserError("nas app", "nas/app/explorer.py", f"the explorer script at {script}; it is missing "
                                                          f"(a broken install: reinstall tinynas)")
    if not 0 < args.port < 65536:
        raise UserError("--port", "port", f"a TCP port between 1 and 65535, got {args.port}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port),
           "--server.address", args.address, "--server.headless", "true" if args.headless else "false",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--", args.source]
    if args.refresh is not None:
        cmd += ["--refresh", str(args.refresh)]
    if args.storage:
        os.environ["TINYNAS_APP_STORAGE"] = args.storage  # may hold a password: never on the command line
    shown = "localhost" if args.address in ("127.0.0.1", "localhost", "::1") else args.address
    print(f"nas app: explorer on http://{shown}:{args.port}/ for {args.source} (Ctrl-C to stop)", flush=True)
    os.execv(sys.executable, cmd)
    return 0  # not reached


def _add_app_parser(sub) -> None:
    ap = sub.add_parser("app", help="the Pareto explorer: a Streamlit app over a run (charts, filters, export)",
                        description="Open the Pareto explorer on a run directory made by nas search, its study.db, "
                                    "or an Optuna storage URL (PostgreSQL: pick the study in the sidebar). It "
                                    "refreshes while a search is running.")
    ap.add_argument("source", metavar="RUN_DIR_OR_STORAGE_URL", help="a run directory, a study.db, or a storage URL")
    ap.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    ap.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                           "only; 0.0.0.0 for every interface)")
    ap.add_argument("--storage", help="the run's storage URL with its password, when run.yaml's needs one")
    ap.add_argument("--refresh", type=float, help="auto-refresh period in seconds while a search runs (default 5)")
    ap.add_argument("--headless", action="store_true", help="do not open a web browser")
    ap.set_defaults(func=cmd_app)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, a did-you-mean, where to look) and exit 2."""

    def error(self, message: str) -> NoReturn:
        from nas.errors import did_you_mean

        hint = ""
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            hint = did_you_mean(bad.group(1), re.findall(r"'([^']*)'", bad.group(2)))
        self.exit(2, f"{self.prog}: error: {message}{hint} (see: {self.prog} --help)\n")

    def unknown(self, extra: Sequence[str]) -> None:
        """Report arguments nobody recognised, with a did-you-mean among this parser's own flags."""
        from nas.errors import did_you_mean

        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        first = next((e for e in extra if e.startswith("-")), None)
        hint = did_you_mean(first.split("=", 1)[0], flags) if first else ""
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def build_parser() -> _Parser:
    p = _Parser(
        prog="nas", description="Hardware-aware NAS and INT8 compression for tiny vision models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p.set_defaults(_commands=sub.choices)

    pr = sub.add_parser("profile", help="MACs, params, flash, peak SRAM, latency and energy of a spec before "
                                        "training, or of any INT8 .tflite")
    pr.add_argument("model", nargs="?", metavar="MODEL.tflite",
                    help="profile this converted INT8 model instead of a spec: MACs by operator class, flash, the "
                         "estimated and the real TFLM arena, memory per operator, the target's limits")
    pr.add_argument("--spec", help="preset name, spec string, or a JSON/YAML spec file")
    pr.add_argument("--resolution", type=int, help="override the input resolution")
    pr.add_argument("--width", type=float, help="override the width multiplier")
    pr.add_argument("--classes", type=int, help="override the classifier's number of classes")
    pr.add_argument("--constraints", help="constraint file: a path or a shipped name such as imx500.yaml")
    pr.add_argument("--measure", action="store_true",
                    help="also convert the untrained model to INT8 and measure its .tflite size and TFLM arena")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(func=cmd_profile)

    ca = sub.add_parser("calibrate", help="fit a per-op latency profile to models timed on your board; write a "
                                          "constraint file with it")
    ca.add_argument("measurements", metavar="MEASUREMENTS.csv",
                    help="CSV with columns model,latency_ms[,energy_mj]: model a .tflite path (relative to the CSV) "
                         "or a spec; measured inference ms and mJ")
    ca.add_argument("--constraints", required=True, help="the constraint file to start from (limits kept)")
    ca.add_argument("--out", required=True, help="the new constraint file to write")
    ca.add_argument("--fit", choices=["auto", "scale", "all"], default="auto",
                    help="scale: one factor on the starting profile; all: every coefficient the rows exercise; "
                         "auto (default): all with at least two rows more than coefficients, else scale")
    ca.add_argument("--force", action="store_true", help="replace --out if it exists")
    ca.set_defaults(func=cmd_calibrate)

    tr = sub.add_parser("train", help="train a spec with INT8 QAT, convert to full-integer TFLite, evaluate as INT8")
    tr.add_argument("--spec", required=True, help="preset name, spec string, or a JSON/YAML spec file")
    tr.add_argument("--resolution", type=int, help="override the input resolution")
    tr.add_argument("--width", type=float, help="override the width multiplier")
    tr.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    tr.add_argument("--dataset", default="mnist", help="mnist (default, embedded), faces, gaze-synthetic, or a folder")
    tr.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    tr.add_argument("--epochs", type=int, default=3, help="training epochs in all, float then QAT (default 3)")
    tr.add_argument("--qat-epochs", type=int, help="how many of --epochs are QAT (default: the recipe's share, "
                                                   "20%%, at least 1)")
    tr.add_argument("--batch-size", type=int, help="default: up to 128, smaller for small data sets")
    tr.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled to the batch)")
    tr.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                    help="training recipe (default: float then QAT; legacy: QAT from the first step, as before "
                         "issue 18); see docs/training.md")
    tr.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    tr.add_argument("--train-limit", type=int, help="use at most this many training samples")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--constraints", help="also report latency and energy on this target")
    tr.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    tr.add_argument("--force", action="store_true", help="replace a trained model in --out")
    tr.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate",
                        help="evaluate an INT8 .tflite (or a folder holding model_int8.tflite) on a data set")
    ev.add_argument("model", help="a .tflite file or a folder with model_int8.tflite")
    ev.add_argument("--dataset", required=True, help="mnist, faces, gaze-synthetic, or a folder")
    ev.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    ev.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which split (default test; 'all' for a folder the model never saw)")
    ev.add_argument("--seed", type=int, default=0, help="split seed (must match training's to reuse its test split)")
    ev.add_argument("--input-range", default="auto", choices=["auto", "0-1", "-1-1", "0-255"],
                    help="the model's float pixel range (default auto: from its int8 input quantization; ours is "
                         "0-1, the MLPerf Tiny IC ResNet-8's 0-255)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
    _add_search_parsers(sub)
    _add_export_parsers(sub)
    _add_app_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the did-you-mean looks among its own flags
        parser_of = args._commands.get(args.command, parser)
        getattr(parser_of, "unknown", parser.unknown)(extra)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "cache_dir", None):  # the environment carries it to workers and child processes
        from nas.datacache import ENV_CACHE_DIR

        os.environ[ENV_CACHE_DIR] = str(Path(args.cache_dir).expanduser().resolve())
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
