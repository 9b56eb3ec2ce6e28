#!/usr/bin/env python3
"""Plot held-out token accuracy against sequence length for the sorting experiment.

Usage: scripts/plot_sorting.py OUT.png RESULT.json [RESULT.json ...]

Each RESULT.json is written by `infini eval sorting --json`. Installs matplotlib into the
repository's .venv on first use (idempotent), so run it with .venv/bin/python.
"""
import importlib.util
import json
import subprocess
import sys


def ensure_matplotlib():
    if importlib.util.find_spec("matplotlib") is None:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, paths = argv[1], argv[2:]
    fig, ax = plt.subplots(figsize=(6, 4))
    segment = None
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        results = report["results"]
        lengths = [r["length"] for r in results]
        accuracy = [r["accuracy"] for r in results]
        label = "∞-former (LTM)" if report["use_ltm"] else "baseline (no LTM)"
        n = results[0]["sequences"]
        style = "-" if report["use_ltm"] else "--"
        ax.plot(lengths, accuracy, style, marker="o", label=f"{label}, {report['step']} steps ({n} seqs/length)")
        segment = report["config"]["segment_len"]
    if segment:
        ax.axvline(segment, color="grey", linestyle=":", label=f"STM ({segment} tokens)")
    # A model that only avoids repeating a symbol and guesses among the rest: (1/20) Σ 1/(20 − k).
    floor = sum(1.0 / (20 - k) for k in range(20)) / 20
    ax.axhline(floor, color="grey", linestyle="-.", linewidth=0.8, label=f"no counting, no repeats ({floor:.3f})")
    ax.set_ylim(0, None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (symbols)")
    ax.set_ylabel("token accuracy over the 20 targets")
    ax.set_title("Sorting (§5.1), scaled-down CPU preset")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
