"""Comparisons that return results, not booleans: every error metric of every output, judged
against a :class:`~tiue_export.specs.Tolerance` after all of them are collected.

A :class:`Result` is falsy on failure and says the tolerance it would have needed. Torch-free:
the export's validation, the runtime tests and ``check`` all use it on numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from .specs import Tolerance


@dataclass
class Result:
    """How far ``out`` is from ``ref`` for one tensor; ``bool(result)`` is whether it passed."""

    name: str
    ok: bool
    shape: list[int]
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    max_ref: float = float("nan")
    rel_l2: float = float("nan")
    cosine: float = float("nan")
    psnr: float | None = None  # dB, for images (given a data range)
    nan: int = 0  # NaN count in out where ref is finite
    inf: int = 0
    tolerance: dict | None = None
    needed: dict = field(default_factory=dict)  # the tolerance that would have passed

    def hint(self) -> str:
        """What tolerance would have passed, naming only the bounds that failed."""
        n, parts = self.needed, []
        if not n:
            return ""
        if n.get("elements_over"):
            parts.append(f"atol>={n['atol']:.3g} or rtol>={n['rtol']:.3g}")
        if n.get("cosine_low"):
            parts.append(f"min_cosine<={n['min_cosine']:.7f}")
        return f"would need {', '.join(parts)}" if parts else ""
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.reason and math.isnan(self.max_abs):
            return f"{self.name}: FAIL ({self.reason})"
        head = f"{self.name}: {'ok' if self.ok else 'FAIL'} max_abs={self.max_abs:.3g} rel_l2={self.rel_l2:.3g} cos={self.cosine:.7f}"
        if self.psnr is not None:
            head += f" psnr={self.psnr:.1f}dB"
        if self.nan or self.inf:
            head += f" nan={self.nan} inf={self.inf}"
        if not self.ok:
            head += f" ({self.reason}{'; ' + self.hint() if self.hint() else ''})"
        return head

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers (an identical image's PSNR, say) become None."""
        return _finite(asdict(self))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def psnr(ref: np.ndarray, out: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)`` (inf when identical)."""
    mse = float(np.mean((np.asarray(ref, np.float64) - np.asarray(out, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def compare_arrays(
    ref,
    out,
    tol: Tolerance | None = None,
    name: str = "output",
    data_range: float | None = None,
    min_psnr: float | None = None,
) -> Result:
    """Compare ``out`` to the reference ``ref``.

    Args:
        ref, out: arrays of the same shape (a shape mismatch always fails).
        tol: elementwise ``|out - ref| <= atol + rtol |ref|`` and ``cosine >= min_cosine``; None
            judges only shapes and NaN/Inf.
        data_range: peak-to-peak range of an image tensor (2 for [-1, 1], 255 for uint8): adds PSNR.
        min_psnr: fail below this PSNR (needs ``data_range``).
    """
    ref = np.asarray(ref)
    out = np.asarray(out)
    if ref.shape != out.shape:
        return Result(name, False, list(out.shape), reason=f"shape {list(out.shape)} != reference {list(ref.shape)}")
    result, diff, rf = _measure(ref.astype(np.float64), out.astype(np.float64), name, data_range)
    result.tolerance = tol.to_dict() if tol else None
    reasons = []
    if result.nan or result.inf:
        reasons.append(f"{result.nan} NaN and {result.inf} Inf values")
    if tol is not None:
        reasons += _outside_tolerance(result, diff, np.abs(rf), tol)
    if min_psnr is not None and result.psnr is not None and result.psnr < min_psnr:
        reasons.append(f"PSNR {result.psnr:.1f} dB < {min_psnr} dB")
    if reasons:
        result.ok = False
        result.reason = "; ".join(reasons)
    return result


def _measure(r: np.ndarray, o: np.ndarray, name: str, data_range: float | None) -> tuple[Result, np.ndarray, np.ndarray]:
    """Every error statistic of ``o`` against ``r`` (float64, one shape), judged ok so far; with
    the elementwise |error| (inf where ``o`` is not finite) and the reference's finite values.
    Where the reference itself is not finite, the element counts as no error."""
    finite = np.isfinite(r)
    nan = int(np.count_nonzero(np.isnan(o) & finite))
    inf = int(np.count_nonzero(np.isinf(o) & finite))
    diff = np.abs(np.where(finite, o - r, 0.0))
    diff = np.where(np.isfinite(diff), diff, np.inf)
    rf = np.where(finite, r, 0.0)
    of = np.where(np.isfinite(o), o, 0.0)
    ref_norm = float(np.linalg.norm(rf))
    err_norm = float(np.linalg.norm(of - rf))
    denom = ref_norm * float(np.linalg.norm(of))
    cosine = float(np.dot(rf.ravel(), of.ravel()) / denom) if denom > 0 else (1.0 if err_norm == 0 else 0.0)
    result = Result(
        name=name,
        ok=True,
        shape=list(r.shape),
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_ref=float(np.abs(rf).max()) if rf.size else 0.0,
        rel_l2=err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf")),
        cosine=cosine,
        psnr=psnr(rf, of, data_range) if data_range else None,
        nan=nan,
        inf=inf,
    )
    return result, diff, rf


def _outside_tolerance(result: Result, diff: np.ndarray, absr: np.ndarray, tol: Tolerance) -> list[str]:
    """Why ``result`` misses ``tol`` (none: it meets it), recording in ``result.needed`` the
    tolerance it would have needed."""
    over = diff > tol.atol + tol.rtol * absr
    cosine = result.cosine
    result.needed = {
        "atol": max(float(np.max(diff - tol.rtol * absr)), 0.0) if diff.size else 0.0,
        "rtol": max(float(np.max((diff - tol.atol) / np.maximum(absr, 1e-30))), 0.0) if diff.size else 0.0,
        "min_cosine": cosine,
        "elements_over": bool(over.any()),
        "cosine_low": bool(cosine < tol.min_cosine),
    }
    reasons = []
    if over.any():
        reasons.append(f"{int(over.sum())} of {over.size} elements outside atol={tol.atol:g} rtol={tol.rtol:g}")
    if cosine < tol.min_cosine:
        reasons.append(f"cosine {cosine:.7f} < {tol.min_cosine}")
    return reasons


@dataclass
class Comparison:
    """The results of every output of one graph (or one pipeline); falsy if any failed."""

    name: str
    results: list[Result]

    def __bool__(self) -> bool:
        return all(self.results)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r]

    def __str__(self) -> str:
        return f"{self.name}: " + "; ".join(str(r) for r in self.results)

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": bool(self), "outputs": {r.name: r.to_dict() for r in self.results}}


def compare_outputs(
    name: str,
    ref: Mapping[str, np.ndarray],
    out: Mapping[str, np.ndarray],
    tol: Tolerance | Mapping[str, Tolerance] | None,
    data_range: Mapping[str, float] | None = None,
) -> Comparison:
    """Compare every output in ``ref`` (a missing one in ``out`` fails) before judging any."""
    results = []
    for key, r in ref.items():
        t = tol.get(key) if isinstance(tol, Mapping) else tol
        if key not in out:
            results.append(Result(key, False, list(np.shape(r)), reason="missing from the output"))
            continue
        results.append(compare_arrays(r, out[key], t, name=key, data_range=(data_range or {}).get(key)))
    return Comparison(name, results)
