"""A bench report as the user reads it: FLOP rates against the matmul peaks, the Markdown table
and its ratio lines, the stacked-bar chart, and the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...cpu import FLAGS
from ...errors import install_hint


def add_rates(report: dict) -> None:
    """UNet GFLOP/s of each one-pass result, and its share of its precision's matmul peak where
    one was measured and the share means something (``unet_peak`` says why not, otherwise)."""
    flops = report["flops"]["one_pass_unet"]
    peaks = report["matmul_gflops"]
    for r in report["results"]:
        st = r["stages"]
        if "unet_encoder" in st and "unet_decoder" in st:
            sec = (st["unet_encoder"]["median_ms"] + st["unet_decoder"]["median_ms"]) / 1000
            rate = flops / sec / 1e9
            word = next((w for w in ("int8", "bf16", "fp16") if w in r["name"]), "fp32")
            r["unet_gflops"] = rate
            r["unet_share_of_matmul_peak"] = None
            if word in report.get("matmul_emulated", ()):
                r["unet_peak"] = f"{word} emulated"
            elif word not in peaks:
                r["unet_peak"] = f"no {word} peak"
            elif rate > peaks[word]:  # mixed precisions (int8 and float ops) can outrun one precision's matmul
                r["unet_peak"] = f"above the {word} peak"
            else:
                r["unet_share_of_matmul_peak"] = rate / peaks[word]
                r["unet_peak"] = f"{100 * rate / peaks[word]:.0f}% of the {word} peak"


def to_markdown(report: dict) -> str:
    """A Markdown table of medians (ms) per stage and backend, with FLOP rates and ratios."""
    rows = report["results"]
    cols = ["text_encoder", "unet_encoder", "unet_decoder", "sum", "vae_decoder", "unet"]
    present = [c for c in cols if any(c in r["stages"] for r in rows)]
    gpu = any("peak_device_mb" in r for r in rows)
    head = "| backend | " + " | ".join(present) + " | end to end (p90) | UNet GFLOP/s (of its matmul peak) | peak RSS MB |" + (" peak GPU MB |" if gpu else "")
    lines = [head, "|" + "---|" * (len(present) + 4 + gpu)]
    for r in rows:
        cells = [f"{r['stages'][c]['median_ms']:.1f}" if c in r["stages"] else "" for c in present]
        tot = r["total"]
        rate = f"{r['unet_gflops']:.0f} ({r['unet_peak']})" if "unet_gflops" in r else ""
        note = f" ({r['note']})" if r.get("note") else ""
        device_mb = (f" {r['peak_device_mb']:.0f} |" if "peak_device_mb" in r else " |") if gpu else ""
        lines.append(
            f"| {r['name']}{note} | " + " | ".join(cells) + f" | {tot['median_ms']:.1f} ({tot['p90_ms']:.1f}) | {rate} | {r['peak_rss_mb']:.0f} |" + device_mb
        )
    m = report["machine"]
    f = report["flops"]
    isa = ", ".join(m["isa"]) or "none of " + ", ".join(FLAGS.values())
    peaks = [f"{k} {v:.0f} GFLOP/s" for k, v in report["matmul_gflops"].items()]
    peaks += [f"{k} emulated (no {k} dot-product instructions: not measured)" for k in report.get("matmul_emulated", ())]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), ISA {isa}"
        + (f"; GPU {m['gpu']} ({m['gpu_memory_gb']:.0f} GiB, CUDA {m['cuda']})." if "gpu" in m else "."),
        f"Matmul peak on {report.get('device', 'cpu')}: " + ", ".join(peaks) + "; int8 rows have no int8 peak to compare with.",
        f"One-pass UNet: {f['one_pass_unet'] / 1e9:.4g} GFLOP (encoder {f['unet_encoder'] / 1e9:.4g}, K-batched decoder "
        f"{f['unet_decoder'] / 1e9:.4g}); one full UNet step {f['full_unet_step'] / 1e9:.4g} GFLOP.",
    ]
    lines += ["", *ratio_lines(report)]
    lines += vae_variant_lines(report)
    lines += vae_decoder_lines(report)
    for r in rows:
        mem = r.get("runtime_memory")
        if mem:
            held = ""
            if abs(mem["held_weight_mb"] - mem["weight_mb"]) > 1:
                held = f" ({mem['peak_over_held_weights']:.2f}x the {mem['held_weight_mb']:.0f} MB it maps)"
            cold = f"first image {mem['first_image_s']:.1f} s after launch"
            if "first_image_s_empty_cache" in mem:
                cold += f" with its graph cache ({mem['first_image_s_empty_cache']:.1f} s with an empty one)"
            lines.append(
                f"- {r['name']}: the torch-free runtime alone (fresh process, load + one image) peaks at "
                f"{mem['peak_rss_mb']:.0f} MB = {mem['peak_over_weights']:.2f}x the {mem['weight_mb']:.0f} MB of weights in the bundle{held} "
                f"with every graph held, {mem['peak_rss_mb_low_memory']:.0f} MB = {mem['peak_over_weights_low_memory']:.2f}x with "
                f"low_memory (one graph at a time; image {mem['seconds_low_memory']:.1f} s vs {mem['seconds']:.1f} s); cold start: {cold}"
            )
    return "\n".join(lines) + "\n"


def vae_decoder_lines(report: dict) -> list[str]:
    """The full and the tiny VAE decoder side by side, if measured."""
    v = report.get("vae_decoders")
    if not v:
        return []
    lines = ["", "| VAE decoder (torch) | GFLOP | decoder params (M) | median ms (p90) |", "|---|---|---|---|"]
    for name in ("full", "tiny"):
        d = v[name]
        label = f"{name}: {d['class']}" + (f" ({v['tiny_decoder']})" if name == "tiny" else "")
        lines.append(f"| {label} | {d['flops'] / 1e9:.4g} | {d['params'] / 1e6:.3g} | {d['median_ms']:.1f} ({d['p90_ms']:.1f}) |")
    flops, speed = times(v["flop_ratio"], "fewer FLOPs", "more FLOPs"), times(v["speedup"], "faster", "slower")
    lines += ["", f"- tiny VAE decoder: {flops}, {speed} than the full decoder (torch {v['full'].get('dtype', 'float32')} on {v['full'].get('device', 'cpu')}, this run)"]
    return lines


def vae_variant_lines(report: dict) -> list[str]:
    """What a decoder row of the variant table (the tiny VAE) buys on each bundle backend, from this run's rows: its decoder
    against the full one and the end to end against the same backend's full-VAE row (alternating
    runs), and the end to end against the first full-VAE row (the baseline: another backend's row
    ran before or after it, so the text encoder, the same graph in every row, is given as the load's control)."""
    rows = [r for r in report["results"] if r.get("vae")]
    full = {r["backend"]: r for r in rows if r["vae"] == "full"}
    baseline = next(iter(full.values()), None)

    def against_baseline(r) -> str:
        text = "text_encoder"
        control = ""
        if text in r["stages"]:  # the same graph in both rows: anything but 1.00x is the load
            control = f"; control: text encoder {times(baseline['stages'][text]['median_ms'] / r['stages'][text]['median_ms'], 'faster', 'slower', 2)}"
        speed = times(baseline["total"]["median_ms"] / r["total"]["median_ms"], "faster", "slower", 2)
        return f"end to end {speed} than {baseline['name']} (sequential rows{control})"

    out = []
    for r in rows:
        if r["vae"] == "full":
            continue
        same = full.get(r["backend"])
        parts = []
        if same is not None:
            dec = same["stages"]["vae_decoder"]["median_ms"] / r["stages"]["vae_decoder"]["median_ms"]
            e2e = same["total"]["median_ms"] / r["total"]["median_ms"]
            parts.append(f"VAE decoder {times(dec, 'faster', 'slower')} than the full one, end to end {times(e2e, 'faster', 'slower', 2)} (alternating runs)")
        if baseline is not None and baseline is not same:
            parts.append(against_baseline(r))
        out.append(f"- {r['name']}: " + "; ".join(parts))
    for r in rows:
        if r["vae"] == "full" and baseline is not None and r is not baseline:
            out.append(f"- {r['name']}: {against_baseline(r)}")
    return out


def times(ratio: float, bigger: str, smaller: str, digits: int = 1) -> str:
    """A ratio worded so the number is at least 1: ``2.0x faster``, never ``0.5x faster``."""
    return f"{ratio:.{digits}f}x {bigger}" if ratio >= 1 else f"{1 / ratio:.{digits}f}x {smaller}"


def ratio_lines(report: dict) -> list[str]:
    """Speed-ups of each one-pass backend over the references, measured in this run."""
    res = {r["name"]: r for r in report["results"]}
    loop = next((r for n, r in res.items() if "K-step loop" in n), None)
    teacher = next((r for n, r in res.items() if "teacher" in n), None)
    out = []
    for name, r in res.items():
        if "one-pass" not in name:
            continue
        unet_ms = sum(r["stages"][s]["median_ms"] for s in ("unet_encoder", "unet_decoder", "sum") if s in r["stages"])
        if loop:
            out.append(f"- {name}: {times(loop['stages']['unet']['median_ms'] / unet_ms, 'faster', 'slower', 2)} than the K-step loop (UNet part)")
        if teacher:
            out.append(f"- {name}: {times(teacher['stages']['unet']['median_ms'] / unet_ms, 'faster', 'slower')} than the teacher's DDIM with CFG (UNet part)")
    return out


def write_chart(report: dict, path: Path) -> None:
    """A stacked horizontal bar chart of per-stage medians for each backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    stages = ["text_encoder", "unet_encoder", "unet_decoder", "sum", "unet", "vae_decoder"]  # in pipeline order
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.5))
    left = np.zeros(len(rows))
    for stage in stages:
        vals = np.array([r["stages"].get(stage, {}).get("median_ms", 0.0) for r in rows])
        if vals.any():
            ax.barh([r["name"] for r in rows], vals, left=left, label=stage)
            left += vals
    ax.set_xlabel("median latency (ms)")
    # Linear, so stacked segments stay proportional; a bar over 5x the next longest (the teacher's
    # 50 steps) is cut at the axis and labelled with its total.
    order = np.sort(left)
    if len(order) > 1 and order[-1] > 5 * order[-2]:
        xmax = 1.25 * order[-2]
        ax.set_xlim(0, xmax)
        for i, total in enumerate(left):
            if total > xmax:
                ax.text(0.98 * xmax, i, f"total {total / 1000:,.0f} s (cut)", ha="right", va="center", fontsize=8, color="white", weight="bold")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    shape = report["config"]["shape"]
    what = shape if shape != "toy" or not report["config"].get("model") else Path(report["model"]).name
    ax.set_title(f"tiue-export bench: {what} {report['image_size'][0]}x{report['image_size'][1]}, batch {report['config']['batch']}")
    fig.tight_layout()
    from ...files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def chart_missing() -> str | None:
    """Why no chart can be drawn here (None: matplotlib is installed): checked before a run starts."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return f"no bench.png: matplotlib is not installed ({install_hint('matplotlib')})"
    return None


def write_report(report: dict, json_path: Path | None, out_dir: Path, chart: bool = True) -> list[Path]:
    """bench.json and bench.md, and with ``chart`` bench.png, under ``out_dir``."""
    from ...files import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    paths = {"json": json_path or out_dir / "bench.json", "md": out_dir / "bench.md", "png": out_dir / "bench.png"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    written.append(paths["json"])
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(to_markdown(report))
    written.append(paths["md"])
    if chart:
        write_chart(report, paths["png"])
        written.append(paths["png"])
    return written

