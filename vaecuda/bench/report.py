"""What the benchmark prints and writes: rows per (case, provider), ratios against eager and
torch.compile, a terminal table, JSON + CSV with the run's metadata, and a PNG plot."""

from __future__ import annotations

import csv
import json
import os

from .workloads import FLOORS, OVER_FLOOR

BASELINES = ("eager", "compile")


def timed(r: dict) -> bool:
    """Whether a row (or a provider's measurement) holds times: a --launches run's hold counts only."""
    return "median_us" in r


def rows_of(case, measured: dict, copy_gbps: float, dtype: str) -> list[dict]:
    """One flat row per provider, with GB/s against the minimum bytes and as a fraction of the copy."""
    rows = []
    for provider, m in measured.items():
        r = {"shape": case.shape, "dims": ",".join(f"{k}={v}" for k, v in case.dims.items()), "dtype": dtype,
             "work": case.work, "mode": case.mode, "provider": provider, "min_bytes": case.min_bytes}
        r.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()})
        if case.min_bytes and provider not in FLOORS and timed(m):
            r["GBps"] = round(case.min_bytes / m["median_us"] / 1e3, 3)
            r["copy_fraction"] = round(r["GBps"] / copy_gbps, 4)
            if "device_us" in m:
                r["device_GBps"] = round(case.min_bytes / m["device_us"] / 1e3, 3)
        rows.append(r)
    by = {r["provider"]: r for r in rows}
    for r in rows:  # how much faster vaecuda (and its CUDA graph) is than each baseline
        if r["provider"] in ("vaecuda", "vaecuda-graph") and timed(r):
            for base in BASELINES:
                if base in by:
                    r[f"speedup_vs_{base}"] = round(by[base]["median_us"] / r["median_us"], 3)
    mine = by.get("vaecuda")
    for floor, key in OVER_FLOOR.items():
        # vaecuda's step over the trivial op timed beside it: the median of the per-round ratios where
        # the harness gives it (harness.paired_ratio), else the ratio of the medians
        if mine is not None and floor in by and timed(mine):
            mine[key] = round(mine.get(key, mine["median_us"] / by[floor]["median_us"]), 3)
    return rows


def is_floor(r: dict) -> bool:
    """The binding-path rows and the trivial-op steps timed inside each case: floors, not providers."""
    return r["work"].startswith("binding path") or r["provider"] in FLOORS


def _fmt(v, width, digits=1):
    if v is None or v == "":
        return " " * (width - 1) + "-"
    return f"{v:>{width}.{digits}f}" if isinstance(v, float) else f"{v:>{width}}"


# each small step over a trivial-op floor (workloads.OVER_FLOOR's keys), as the table's text gives it
RATIO_CAPTIONS = {
    "over_trivial_op": "vaecuda's small fwd+bwd steps over vaecuda's trivial op on [B, D], timed in the same "
                       "rounds (median of the per-round ratios): ",
    "over_same_size_op": "... over the trivial op on as many elements as the logits ([B, P]): ",
    "over_two_root_op": "... the two-output steps over the trivial op's output passed as two roots with two "
                        "upstream gradients, as those steps pass theirs: ",
}


def tables(rows: list[dict]) -> str:
    """The ops and training steps, then the binding paths and each small op's cost over the trivial
    op's (both timed in the same rounds); for a run that counted launches instead, their table."""
    if rows and not any(timed(r) for r in rows):
        return launch_table(rows)
    main = [r for r in rows if not is_floor(r)]
    binding = [r for r in rows if r["work"].startswith("binding path")]
    out = [table(main)] if main else []
    ratios = {key: [f"{r['work']} {r[key]:.2f}×" for r in rows if key in r] for key in RATIO_CAPTIONS}
    if binding or ratios["over_trivial_op"]:
        lines = [f"{r['provider'] + (' [B, P]' if r['work'].endswith('(pixels)') else ' [B, D]'):<26}"
                 f"{r['median_us']:>10.1f} µs" for r in binding]
        text = "binding path, the cheapest op (alpha * x) fwd+bwd at the small shape:"
        text += "".join("\n  " + line for line in lines)
        for key, caption in RATIO_CAPTIONS.items():
            if ratios[key]:
                text += "\n  " + caption + ", ".join(ratios[key])
        out.append(text)
    return "\n\n".join(out)


def launch_table(rows: list[dict]) -> str:
    """Kernels launched per step, one line per case, one column per provider (and floor)."""
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    cases = {}
    for r in rows:
        cases.setdefault((r["dtype"], r["shape"], r["work"], r["mode"]), {})[r["provider"]] = r
    head = f"{'dtype':<9}{'shape':<13}{'work':<22}{'mode':<8}" + "".join(f"{p[:15]:>16}" for p in providers)
    lines = [head, "-" * len(head)]
    for (dtype, shape, work, mode), by in cases.items():
        lines.append(f"{dtype:<9}{shape:<13}{work[:21]:<22}{mode:<8}"
                     + "".join(_fmt(by.get(p, {}).get("launches"), 16) for p in providers))
    lines.append("kernels launched by one step of each provider (torch.profiler, after warm-up): a run of its "
                 "own, apart from timed runs (see harness.count_launches).")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """One line per case: each provider's median µs side by side, vaecuda's ratios and GB/s."""
    providers = []
    for r in rows:
        if r["provider"] not in providers:
            providers.append(r["provider"])
    cases = {}
    for r in rows:
        cases.setdefault((r["dtype"], r["shape"], r["work"], r["mode"]), {})[r["provider"]] = r
    head = f"{'dtype':<9}{'shape':<13}{'work':<14}{'mode':<8}" + "".join(f"{p[:15]:>16}" for p in providers)
    graphs = any("vaecuda-graph" in r["provider"] for r in rows)
    head += f"{'×eager':>8}{'×compile':>9}{'GB/s':>8}{'%copy':>7}" + (f"{'%copy-g':>8}" if graphs else "")
    lines = [head, "-" * len(head)]
    for (dtype, shape, work, mode), by in cases.items():
        mine = by.get("vaecuda", {})
        line = f"{dtype:<9}{shape:<13}{work:<14}{mode:<8}"
        line += "".join(_fmt(by[p]["median_us"], 16) if p in by else _fmt(None, 16) for p in providers)
        frac = mine.get("copy_fraction")
        line += _fmt(mine.get("speedup_vs_eager"), 8, 2) + _fmt(mine.get("speedup_vs_compile"), 9, 2)
        line += _fmt(mine.get("GBps"), 8, 2) + _fmt(frac * 100 if frac is not None else None, 7)
        if graphs:  # the same bytes over the captured graph's step: the kernels without host overhead
            g = by.get("vaecuda-graph", {}).get("copy_fraction")
            line += _fmt(g * 100 if g is not None else None, 8)
        lines.append(line)
    lines.append("µs: median host-inclusive time per step (a loop of calls, then one sync). ×eager, ×compile: "
                 "that provider's time over vaecuda's (above 1: vaecuda is faster). GB/s: vaecuda's minimum "
                 "bytes per step over its time; %copy: of a copy measured in the same run; %copy-g: the same for "
                 "vaecuda's step replayed as a CUDA graph (no host overhead).")
    return "\n".join(lines)


def write(out_dir: str, stem: str, meta: dict, rows: list[dict]) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(base + ".csv", "w", newline="") as f:
        f.write("".join(f"# {k}: {v}\n" for k, v in meta.items()))
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    written = [base + ".json", base + ".csv"]
    png = plot(base + ".png", meta, rows) if any(timed(r) for r in rows) else None
    return written + ([png] if png else [])


def plot(path: str, meta: dict, rows: list[dict]) -> str | None:
    """Speed-ups per case (vaecuda over eager and over torch.compile) and achieved GB/s against the
    bytes each step must move, with the copy bandwidth measured in the same run."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    mine = [r for r in rows if r["provider"] == "vaecuda" and "speedup_vs_eager" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, max(4.0, 0.28 * len(mine) + 1.5)))
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
    labels = [f"{short.get(r['dtype'], r['dtype'])} {r['shape']} {r['work']} {r['mode']}" for r in mine]
    ys = range(len(mine))
    ax1.barh([y - 0.2 for y in ys], [r["speedup_vs_eager"] for r in mine], 0.4, label="vs eager")
    ax1.barh([y + 0.2 for y in ys], [r.get("speedup_vs_compile", 0) for r in mine], 0.4, label="vs torch.compile")
    ax1.axvline(1.0, color="k", lw=0.8)
    ax1.set_yticks(list(ys), labels, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("speed-up of vaecuda (host-inclusive time per step)")
    ax1.legend(fontsize=8)
    for provider, marker in (("eager", "o"), ("compile", "s"), ("vaecuda", "^")):
        pts = [(r["min_bytes"], r["GBps"]) for r in rows if r["provider"] == provider and r.get("GBps")]
        if pts:
            ax2.scatter(*zip(*pts), marker=marker, label=provider, s=18)
    ax2.axhline(meta["copy_GBps"], color="k", ls="--", lw=0.8, label=f"copy {meta['copy_GBps']} GB/s")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("minimum bytes per step")
    ax2.set_ylabel("achieved GB/s")
    ax2.legend(fontsize=8)
    fig.suptitle(f"vaecuda {meta['vaecuda']} | torch {meta['torch']} | {meta['machine']} | {meta['date'][:10]}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
