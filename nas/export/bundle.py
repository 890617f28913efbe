"""Export itself: one trained folder to a bundle (:func:`export_trial`: measure the arena, draw samples and run
them in TFLM, write the files, the metadata and the model card), and :func:`export`, which takes a trained
folder or a run directory and the trials chosen from it."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from nas import finalize
from nas.errors import UserError
from nas.export.card import model_card
from nas.export.csource import arena_with_margin, c_array_source, c_header
from nas.export.imx500_part import IMX500_MODES, imx500_part
from nas.export.interpreters import io_details, quantize, run_tflm, tflite_reference
from nas.export.layout import C_HEADER, C_SOURCE, CARD, CONSTRAINTS, KERAS, METADATA, SAMPLES, TFLITE
from nas.export.metadata import bundle_metadata
from nas.formatting import jsonable
from nas.export.select import select_trials, source_info
from nas.export.staging import check_destination, check_name, check_out_dir, staged, write_zip
from nas.export.trial import Trial, default_name, is_run_dir, load_data, read_trial

log = logging.getLogger(__name__)

#: Test inputs stored in samples.npz with TFLM's outputs for them (``--samples``).
DEFAULT_SAMPLES = 8


def _sample_indices(n_total: int, n: int) -> list[int]:
    """Evenly spread, deterministic picks from the test split (not just its first rows)."""
    import numpy as np

    n = max(1, min(n, n_total))
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


def export_trial(trial_dir: Path | str, out_dir: Path | str, *, name: str | None = None, target: Any = None,
                 run_info: dict[str, Any] | None = None, force: bool = False, zip_bundle: bool = False,
                 imx500: str = "auto", imx500_venv: str | Path | None = None,
                 samples: int = DEFAULT_SAMPLES) -> Path:
    """Export one trained folder as a bundle ``out_dir/name`` (default name: the folder's name); returns it.

    ``target``: a :class:`nas.hardware.Target` for latency, energy and the limit checks (None: no target).
    ``run_info``: where the trial came from (run directory, study, trial number, selection...), recorded
    as is. ``imx500``: ``auto`` adds the IMX500 converter's output for ``runtime: imx500`` targets when its
    environment exists (and records how to add it when not), ``on`` requires it, ``off`` skips it.
    """
    if imx500 not in IMX500_MODES:
        raise UserError("--imx500", "imx500", f"one of {IMX500_MODES}, got {imx500!r}")
    if samples < 1:
        raise UserError("--samples", "samples", f"a positive number of sample inputs, got {samples}")
    trial = read_trial(trial_dir)
    out_dir = check_out_dir(out_dir)
    dest = check_name(name or default_name(trial.path), out_dir)
    check_destination(dest, force, zip_bundle)
    want_imx = imx500 == "on" or (imx500 == "auto" and target is not None and target.runtime == "imx500")
    if imx500 == "on":
        from nas import imx500 as imx

        if not imx.is_installed(imx500_venv):
            raise UserError("--imx500", "imx500", f"the IMX500 converter environment at "
                                                  f"{imx.resolve_venv(imx500_venv)}; it is missing (nas imx500 setup)")
    t0 = time.perf_counter()
    with staged(dest, force) as tmp:
        _write_bundle(trial, tmp, dest.name, target=target, run_info=run_info or {}, want_imx=want_imx,
                      imx500_venv=imx500_venv, n_samples=samples)
    log.info("exported %s in %.1f s", dest, time.perf_counter() - t0)
    if zip_bundle:
        write_zip(dest)
    return dest


def _write_bundle(trial: Trial, tmp: Path, name: str, *, target: Any, run_info: dict[str, Any], want_imx: bool,
                  imx500_venv: str | Path | None, n_samples: int) -> None:
    """Write every file of the bundle into ``tmp`` (metadata.json and README.md last)."""
    import numpy as np

    from nas import arena, profile, tflm
    from nas.tf import pipeline

    timings: dict[str, float] = {}
    spec, tflite = trial.spec, trial.tflite
    inp, out = io_details(tflite)
    if inp["dtype"] != "int8" or out["dtype"] != "int8":
        raise UserError(str(trial.files.tflite), "input/output",
                        f"a full-integer model with int8 input and output, got {inp['dtype']} / {out['dtype']}")
    t = time.perf_counter()
    meas = tflm.measure_tflm(tflite, find_minimum=True)
    minimum = int(meas.min_arena_bytes or meas.arena_bytes)
    arena_size, margin = arena_with_margin(minimum)
    measured = profile.measure(tflite)
    est = profile.estimate(spec)
    timings["measure"] = time.perf_counter() - t

    t = time.perf_counter()
    ds = load_data(trial)
    grid = ds.grid_channels
    x_test = pipeline.prepare(ds.test, spec.resolution, spec.channels, grid)
    idx = _sample_indices(len(x_test), n_samples)
    x_float = np.asarray(x_test[idx], dtype=np.float32)
    x_q = quantize(x_float, inp["scale"], inp["zero_point"])
    y_tflm = run_tflm(tflite, arena_size, x_q)
    y_ref = tflite_reference(tflite, x_q)
    reference_diff = int(np.abs(y_tflm.astype(np.int32) - y_ref.astype(np.int32)).max())
    if reference_diff:  # TFLM's and TFLite's kernels round some ops (HARD_SWISH, the SE MUL) differently
        log.info("TFLM and tf.lite (reference kernels) differ on the samples by up to %d LSB", reference_diff)
    labels = np.asarray(ds.test.y)[idx]
    np.savez(tmp / SAMPLES, inputs=x_q, outputs=y_tflm.astype(np.int8), labels=labels,
             indices=np.asarray(idx, dtype=np.int64))
    timings["samples"] = time.perf_counter() - t

    (tmp / TFLITE).write_bytes(tflite)
    shutil.copyfile(trial.files.keras, tmp / KERAS)
    (tmp / C_SOURCE).write_text(c_array_source(tflite))
    (tmp / C_HEADER).write_text(c_header(arena_size=arena_size, arena_min=minimum, margin=margin, inp=inp, out=out,
                                         spec=spec.to_string()))
    if target is not None and Path(target.path).is_file():
        shutil.copyfile(target.path, tmp / CONSTRAINTS)

    ops = list(dict.fromkeys(op.kind for op in arena.read_graph(tflite).main.ops))
    imx_meta = None
    if want_imx:
        t = time.perf_counter()
        imx_meta = imx500_part(trial, tmp, name, ds, x_float, y_tflm, out, est, measured, imx500_venv)
        timings["imx500"] = time.perf_counter() - t

    meta = bundle_metadata(trial, name, target=target, run_info=run_info, inp=inp, out=out, meas=meas,
                           minimum=minimum, arena_size=arena_size, margin=margin, measured=measured, est=est, ops=ops,
                           idx=idx, reference_diff=reference_diff, imx=imx_meta, dataset=ds, tmp=tmp,
                           timings=timings)
    (tmp / CARD).write_text(model_card(meta, spec))
    (tmp / METADATA).write_text(json.dumps(meta, indent=1, default=jsonable) + "\n")


def export(source: Path | str, out_dir: Path | str, *, trial: int | None = None, pareto: bool = False,
           best: str | None = None, name: str | None = None, constraints: str | None = None,
           storage: str | None = None, force: bool = False, zip_bundle: bool = False, imx500: str = "auto",
           imx500_venv: str | Path | None = None, samples: int = DEFAULT_SAMPLES) -> list[Path]:
    """Export from a run directory (choosing trials) or from one trained folder; returns the bundle folders.

    For a run, the target defaults to the run's own copy of its constraint file (``constraints`` overrides).
    Every destination is checked before the first bundle is written, so ``--pareto`` never stops halfway
    over an existing bundle.
    """
    from nas.hardware import load_target

    src = Path(source)
    out = check_out_dir(out_dir)
    tgt = load_target(constraints) if constraints else None
    if not is_run_dir(src):
        if trial is not None or pareto or best:
            raise UserError(str(src), "--trial/--pareto/--best",
                            "a run directory (with run.yaml) to choose trials from; this is a single trained folder: "
                            "leave them out")
        if name is not None:
            check_name(name, out)
        return [export_trial(src, out, name=name, target=tgt, run_info={"selected_by": "trained folder"},
                             force=force, zip_bundle=zip_bundle, imx500=imx500, imx500_venv=imx500_venv,
                             samples=samples)]
    from nas import results

    run = results.open_run(src, storage)
    records = run.trials()
    finals = finalize.chosen(finalize.read_finalized(run.path), run.metric[1])
    picked = select_trials(run, trial=trial, pareto=pareto, best=best, records=records, finals=finals)
    front = {r.number for r in run.pareto(records)}
    selected_by = (f"--trial {trial}" if trial is not None else "--pareto" if pareto else f"--best {best}")
    target = tgt or run.target()
    names = [name if name and len(picked) == 1 else f"{name}-trial-{r.number}" if name else f"trial-{r.number}"
             for r in picked]
    dests = [check_name(n, out) for n in names]
    for d in dests:
        check_destination(d, force, zip_bundle)
    bundles = []
    for r, n in zip(picked, names):
        if r.violations:
            log.warning("trial %d breaks the limits %s of %s", r.number, ", ".join(r.violations), target.name)
        final = finals.get(r.number)
        folder = final.path if final else run.path / r.trial_dir
        log.info("trial %d: exporting %s", r.number, f"its finalized model (seed {final.seed})" if final else
                 "its search-time model (no finalized one: nas finalize retrains it and reports it on test)")
        bundles.append(export_trial(folder, out, name=n, target=target,
                                    run_info=source_info(run, r, selected_by, front, final), force=force,
                                    zip_bundle=zip_bundle, imx500=imx500, imx500_venv=imx500_venv, samples=samples))
    return bundles
