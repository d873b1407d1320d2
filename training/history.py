"""The per-epoch log: a CSV (rewritten whole each epoch, so it is never half a row) and a PNG of the curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from GTVAutoSegLib.outputs import atomic_output


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in keys})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_curves(rows: list[dict], path: Path, metric_keys: tuple[str, ...]) -> None:
    """Training and validation loss on the left, the validation metrics on the right."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never a window
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]

    def series(key):
        return [r.get(key, math.nan) if isinstance(r.get(key), (int, float)) else math.nan for r in rows]

    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_l.plot(epochs, series(key), marker="o", ms=3, label=label)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    ax_l.legend()
    for key in metric_keys:
        ax_m.plot(epochs, series(key), marker="o", ms=3, label=key.removeprefix("val_"))
    best = [r["epoch"] for r in rows if r.get("best")]
    for e in best[-1:]:
        ax_m.axvline(e, color="grey", ls=":", lw=1, label=f"best (epoch {e})")
    ax_m.set_xlabel("epoch")
    ax_m.set_ylabel("validation")
    ax_m.set_ylim(0, 1.02)
    ax_m.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
