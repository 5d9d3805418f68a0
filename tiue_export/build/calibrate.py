"""``tiue-export calibrate``: one orchestration of int8 calibration, two quantizers.

Every engine's calibration is the same run: open the fp32 bundle, split the prompts into a
calibration and a held-out set, quantize each UNet graph on the real inputs the bundle's own
pipeline feeds it, stage the files beside the bundle, measure int8 against fp32 on the held-out
prompts, record how and how well in the manifest, and publish (manifest last). What differs is
the quantizer: ONNX Runtime's static Q/DQ (:class:`~tiue_export.build.quantize.OnnxRuntimeQuantizer`)
or NNCF for OpenVINO (:class:`~tiue_export.build.quantize_openvino.OpenVinoQuantizer`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from ..backends import graph_cache
from ..bundle import Bundle, publish
from ..files import staging_dir
from .quantize import (
    QUANTIZED_GRAPHS,
    CalibrationConfig,
    CalibrationReport,
    OnnxRuntimeQuantizer,
    calibration_record,
    calibration_sets,
    check_config,
    measure,
    open_fp32_bundle,
    quality_line,
    refuse_below_gate,
    with_variants,
)
from .quantize_openvino import OpenVinoQuantizer

log = logging.getLogger("tiue_export")

#: engine -> its quantizer
QUANTIZERS = {"onnxruntime": OnnxRuntimeQuantizer, "openvino": OpenVinoQuantizer}


def calibrate_bundle(cfg: CalibrationConfig) -> CalibrationReport:
    """Calibrate and write the int8 graphs of ``cfg.engine`` into the bundle at ``cfg.bundle``.

    Raises:
        InputError: bad options, not an fp32 bundle, a missing prompts file. MissingDependency:
            the engine's quantization library. TiueError: quantization failed (the bundle is left
            as it was).
    """
    from ..runtime import Pipeline

    check_config(cfg)
    quantizer = QUANTIZERS[cfg.engine](cfg)
    t_start = time.perf_counter()
    bundle = open_fp32_bundle(Path(cfg.bundle))
    prompts_file, calib, held, seeds, eval_seeds = calibration_sets(cfg, bundle, quantizer.prompt_count())
    log.info("calibrating %s%s on %d prompts from %s (%s)", bundle.path, quantizer.target, len(calib), prompts_file, quantizer.method)
    seconds: dict[str, float] = {}
    root = bundle.path
    staging = staging_dir(root, "calibrate")
    fp32 = Pipeline(bundle, "onnxruntime", threads=cfg.threads, providers=["CPUExecutionProvider"])
    try:
        entries = {}
        for name in QUANTIZED_GRAPHS:
            t0 = time.perf_counter()
            entries[name] = quantizer.quantize(name, bundle, fp32, calib, seeds, staging)
            seconds[f"quantize_{name}"] = time.perf_counter() - t0
            log.info("  %s: %s", name, quantizer.summary(entries[name]))
        t0 = time.perf_counter()
        staged = with_variants(bundle.manifest, entries, prefix=os.path.relpath(staging, root), variant=quantizer.variant)
        with quantizer.open_int8(Bundle(root, staged)) as int8:
            quality = measure(fp32, int8, held, eval_seeds, cfg.gate)
        seconds["measure"] = time.perf_counter() - t0
        log.info("  %s", quality_line(quality))
        refuse_below_gate(quality, cfg, quantizer.name, quantizer.other_recipe)
        seconds["total"] = time.perf_counter() - t_start
        record = calibration_record(cfg, prompts_file, len(calib), quality, seconds, quantizer.versions(), **quantizer.how())
        manifest = with_variants(bundle.manifest, entries, prefix="", variant=quantizer.variant)
        manifest = manifest.replace(extra={**manifest.extra, quantizer.record_key: record})
        publish(root, {f: staging / f for e in entries.values() for f in (e.file, *e.external_data)}, manifest)
    finally:
        fp32.close()
        graph_cache.forget(staging)  # the staged graphs' entries: the published graphs get their own
        shutil.rmtree(staging, ignore_errors=True)
    return CalibrationReport(root, entries, quality, seconds)
