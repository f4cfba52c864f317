"""The report as a PNG: one panel per workload, a bar per runner (median) with its min-max range.

matplotlib is optional (`pip install 'nvmmpy[bench]'`); without it the chart is skipped with a
one-line message and the table and JSON are still written.
"""
from .report import scale

COLOURS = {"nvmmpy-kvm": "#1f77b4", "nvmmpy-nvmm": "#17becf", "nvmmpy-unicorn": "#ff7f0e",
           "qemu-kvm": "#2ca02c", "qemu-tcg": "#d62728", "native": "#7f7f7f"}


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(report: dict, path: str) -> None:
    """Write the chart to `path` (PNG); ImportError with the install hint if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("matplotlib is not installed: pip install 'nvmmpy[bench]' (or matplotlib) "
                          "to draw the chart") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [w for w in report["workloads"] if any(r["summary"] for r in w["results"].values())]
    cols = 3
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, w in zip(axes.flat, shown):
        names = [n for n, r in w["results"].items() if r["summary"]]
        k, unit = scale(w)
        unit = "x real time" if w["display"] == "x" else f"{unit} per {w['unit']}"
        med = [w["results"][n]["summary"]["median"] * k for n in names]
        lo = [m - w["results"][n]["summary"]["min"] * k for m, n in zip(med, names)]
        hi = [w["results"][n]["summary"]["max"] * k - m for m, n in zip(med, names)]
        ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=3,
               color=[COLOURS.get(n, "#9467bd") for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_title(w["name"], fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
        if len(med) > 1 and max(med) / max(min(med), 1e-12) > 30:
            ax.set_yscale("log")
    m = report["machine"]
    fig.suptitle(f"nvmmpy bench ({report['mode']}, {report['repetitions']} reps): {m['cpu_model']}, "
                 f"{m['cores']} cores, /dev/kvm {m['kvm']['backend'] or 'unusable'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
