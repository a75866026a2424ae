"""Benchmark reports: a markdown table (for the README) and a PNG of the speedups, from a
run just measured or from result JSON files already committed (``--from-json``).

A "result" is the JSON payload that ``python -m cnnops.bench --json`` writes: metadata
(device, torch, date, threads, dtype, ...) plus one row per case and direction.
"""
import json
import os
import statistics

DIRECTION_ORDER = ("forward", "forward+backward")
BUSY_LOAD = 0.2  # as in core: other processes' CPUs above which a row counts as disturbed


def _busy(row):
    load = row.get("other_cpu_load")
    return load is not None and load > BUSY_LOAD


def load_results(paths):
    """The payloads of these JSON files, in the order given; ValueError naming the file when
    one is not a cnnops.bench result."""
    results = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError as e:
            raise ValueError(f"--from-json: cannot read {path}: {e.strerror or e}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"--from-json: {path} is not JSON ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or "device" not in data:
            raise ValueError(f"--from-json: {path} is not a cnnops.bench result (expected an object with "
                             f"'device' and a 'cases' list)")
        data = dict(data)
        data.setdefault("source", os.path.basename(path))
        results.append(data)
    return results


def _ok(row):
    return row.get("status") == "ok" and bool(row.get("correct")) and row.get("speedup") is not None


def _ms(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else (f"{x:.2f}" if x < 100 else f"{x:.1f}")


def _speedup(row):
    if row.get("status") != "ok":
        return row.get("status") or "-"
    s = row.get("speedup")
    if s is None:
        return "-"
    return f"{s:.2f}x" + ("" if row.get("correct") else " (WRONG)") + (" *" if _busy(row) else "")


def _cell(text):
    return str(text).replace("|", "\\|")


def _date(meta):
    return str(meta.get("date") or "unknown date")[:10]


def device_label(meta):
    """"Intel(R) Xeon(R) Processor, 2 threads" or "NVIDIA H100 80GB HBM3"."""
    name = meta.get("device") or "unknown device"
    if meta.get("device_type") == "cpu" and meta.get("threads"):
        return f"{name} (CPU), {meta['threads']} thread{'s' if meta['threads'] != 1 else ''}"
    return name


def describe(meta):
    """One line naming what a result was measured on: device, torch version, dtype, date."""
    parts = [device_label(meta), f"torch {meta.get('torch', '?')}", meta.get("dtype") or "?", _date(meta)]
    if meta.get("device_type") == "cuda" and meta.get("conv_tf32") is not None:
        parts.insert(3, "TF32 convolutions " + ("on" if meta["conv_tf32"] else "off"))
    if meta.get("commit"):
        parts.append(f"commit {meta['commit'][:10]}" + (" (dirty)" if meta.get("dirty") else ""))
    return ", ".join(parts)


def median_speedups(rows):
    """{direction: (median speedup, number of correct cases)} over the correct rows."""
    out = {}
    for d in DIRECTION_ORDER:
        sp = [r["speedup"] for r in rows if r.get("direction") == d and _ok(r)]
        if sp:
            out[d] = (statistics.median(sp), len(sp))
    return out


def markdown(results, title=None):
    """Markdown for the README: per result a line naming device, torch version, dtype and
    date, the table (op, shape, dtype, direction, torch ms, cnnops ms, speedup) and the
    median speedups. Speedup = torch ms / cnnops ms: above 1x cnnops is faster."""
    lines = []
    if title:
        lines += [title, ""]
    for meta in results:
        src = f" (`{meta['source']}`)" if meta.get("source") else ""
        lines.append(f"**{describe(meta)}**{src}")
        lines.append("")
        lines.append("| op | shape | dtype | direction | torch ms | cnnops ms | speedup |")
        lines.append("| --- | --- | --- | --- | ---: | ---: | ---: |")
        for r in meta["cases"]:
            shape = f"{r.get('shape', '')} ({r.get('case', '')})" if r.get("case") else r.get("shape", "")
            lines.append("| " + " | ".join(_cell(c) for c in (
                r.get("op", "?"), shape, r.get("dtype", "?"), r.get("direction", "?"),
                _ms(r.get("torch_ms")), _ms(r.get("cnnops_ms")), _speedup(r))) + " |")
        med = median_speedups(meta["cases"])
        if med:
            lines.append("")
            lines.append("Median speedup: " + "; ".join(f"{d} {m:.2f}x ({n} cases)" for d, (m, n) in med.items())
                         + ".")
        bad = [r for r in meta["cases"] if r.get("status") == "error" or (r.get("status") == "ok"
                                                                          and not r.get("correct"))]
        if bad:
            lines.append(f"{len(bad)} row(s) failed or did not match torch; left out of the medians.")
        busy = [r for r in meta["cases"] if _busy(r)]
        if busy:
            worst = max(r["other_cpu_load"] for r in busy)
            lines.append(f"\\* {len(busy)} of {len(meta['cases'])} rows were timed while other processes used "
                         f"more than {BUSY_LOAD} CPUs (up to {worst:.2f}): noisier than the rest.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_groups(results):
    """The panels of the plot: one per (result, op family), in order, each a dict with the
    title, the case labels and, per direction, the speedups of its correct rows (None where
    a row is missing, failed or wrong) and whether each was timed on a busy machine."""
    panels = []
    for meta in results:
        families = []
        for r in meta["cases"]:
            if r.get("op") not in families:
                families.append(r.get("op"))
        for fam in families:
            rows = [r for r in meta["cases"] if r.get("op") == fam]
            key = lambda r: (r.get("case") or r.get("shape"), r.get("shape"))  # noqa: E731
            cases = list(dict.fromkeys(key(r) for r in rows))
            speedups, busy = {}, {}
            for d in DIRECTION_ORDER:
                ok = {key(r): r for r in rows if r.get("direction") == d and _ok(r)}
                if ok:
                    speedups[d] = [ok[c]["speedup"] if c in ok else None for c in cases]
                    busy[d] = [c in ok and _busy(ok[c]) for c in cases]
            if speedups:
                panels.append({"title": f"{fam} - {device_label(meta)}, torch {meta.get('torch', '?')}, "
                                        f"{meta.get('dtype') or '?'}, {_date(meta)}",
                               "labels": [f"{c}\n{s}" if s and s != c else str(c) for c, s in cases],
                               "speedups": speedups, "busy": busy})
    return panels


def _times(y, _pos=None):
    return f"{y:g}x"


def plot(results, path):
    """Writes a PNG: one panel per op family (and result file), a bar per case and
    direction drawn from the 1x line (up: cnnops faster, down: slower), speedup on a log
    scale. Returns the path."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"--plot needs matplotlib, which is not installed ({e}): pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = plot_groups(results)
    if not panels:
        raise ValueError("--plot: no correct benchmark rows to plot")
    colors = {"forward": "tab:blue", "forward+backward": "tab:orange"}
    widest = max(len(p["labels"]) for p in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.9 * widest + 2), 3.6 * len(panels) + 0.6),
                             squeeze=False)
    any_busy = False
    for ax, p in zip(axes[:, 0], panels):
        dirs = list(p["speedups"])
        n = len(p["labels"])
        width = 0.8 / len(dirs)
        values = [v for d in dirs for v in p["speedups"][d] if v is not None]
        for j, d in enumerate(dirs):
            for i, (y, busy) in enumerate(zip(p["speedups"][d], p["busy"][d])):
                if y is None:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                ax.bar(x, y - 1.0, width, bottom=1.0, color=colors.get(d), hatch="///" if busy else None,
                       edgecolor="white" if busy else None, linewidth=0)
                any_busy |= busy
                ax.annotate(f"{y:.2g}x", (x, y), ha="center", va="bottom" if y >= 1 else "top", fontsize=7,
                            xytext=(0, 2 if y >= 1 else -2), textcoords="offset points")
        ax.set_yscale("log")
        lo, hi = min(values + [1.0]), max(values + [1.0])
        ax.set_ylim(lo / 1.8, hi * 1.8)  # room for the labels; the 1x line always inside
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_times))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axhline(1.0, color="black", linewidth=1.2, linestyle="--")
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_xticks(range(n))
        ax.set_xticklabels(p["labels"], fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("speedup (torch / cnnops)")
        ax.set_title(p["title"], fontsize=9)
        ax.grid(True, axis="y", which="major", alpha=0.3)
    handles = [Patch(color=colors[d], label=d) for d in DIRECTION_ORDER]
    handles.append(Line2D([], [], color="black", linestyle="--", label="1x: as fast as torch (above: cnnops faster)"))
    if any_busy:
        handles.append(Patch(facecolor="grey", hatch="///", edgecolor="white",
                             label=f"timed while other processes used > {BUSY_LOAD} CPUs"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(results, markdown_out=None, plot_path=None):
    """What ``--markdown`` / ``--plot PATH`` do; markdown_out is a file to print to."""
    if markdown_out is not None:
        print(markdown(results), file=markdown_out, end="")
    if plot_path:
        plot(results, plot_path)
