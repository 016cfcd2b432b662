"""Pictures of evaluation results: a row-normalised confusion matrix and a per-class accuracy chart (PNG files).

matplotlib is imported when a picture is drawn, not with this module, and only its object-oriented API with the Agg
canvas is used (no pyplot, no global backend switch), so drawing works on machines without a display and leaves the
caller's own matplotlib state alone. Above ``MAX_MATRIX_CLASSES`` classes a matrix is unreadable: the most frequent
(true, predicted) pairs are written as a table instead (:func:`write_confusions`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MAX_MATRIX_CLASSES",
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_per_class_accuracy",
    "top_confusions",
    "write_confusions",
]

log = logging.getLogger("videorec")

MAX_MATRIX_CLASSES = 100  # above this the matrix becomes a table of the top confusions
MAX_NAMED_AXES = 50  # class names on the matrix's axes up to this many classes, indices above
MAX_ANNOTATED = 15  # the counts written in the matrix's cells up to this many classes


def confusion_matrix(label: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((label.long(), pred.long()), torch.ones_like(label, dtype=torch.long), accumulate=True)
    return confusion


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(
    confusion: torch.Tensor, class_names: Sequence[str], path: str | Path, title: str = "confusion matrix"
) -> Path:
    """A PNG of the confusion matrix, each row divided by its class's support (rows without videos stay empty)."""
    K = confusion.shape[0]
    if K > MAX_MATRIX_CLASSES:
        raise ValueError(f"{K} classes: a matrix above {MAX_MATRIX_CLASSES} is unreadable, use write_confusions")
    counts = confusion.double()
    support = counts.sum(1, keepdim=True)
    rows = torch.where(support > 0, counts / support.clamp(min=1), torch.zeros_like(counts)).numpy()
    side = min(24.0, max(5.0, 3.0 + 0.22 * K))
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = list(range(K))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if K <= MAX_NAMED_AXES:
        size = 9 if K <= 20 else 7
        ax.set_xticklabels(class_names, rotation=90, fontsize=size)
        ax.set_yticklabels(class_names, fontsize=size)
    else:  # names would overlap: every 5th index
        labels = [str(k) if k % 5 == 0 else "" for k in ticks]
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yticklabels(labels, fontsize=7)
    if K <= MAX_ANNOTATED:
        for i in range(K):
            for j in range(K):
                if confusion[i, j]:
                    colour = "white" if rows[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} ({int(confusion.sum())} videos, {K} classes)")
    path = Path(path)
    fig.savefig(path)
    return path


def plot_per_class_accuracy(
    rows: Sequence[dict[str, Any]], path: str | Path, max_bars: int = 40, title: str = "per-class accuracy"
) -> Path:
    """A PNG bar chart of the classes' accuracies, sorted from worst to best, each bar labelled with the class name
    and its support. Classes without videos are left out; above ``max_bars`` classes the worst and the best
    ``max_bars // 2`` are shown, with the number of classes in between in the title."""
    scored = sorted((r for r in rows if r["support"]), key=lambda r: (r["accuracy"], str(r["name"])))
    shown, hidden = list(scored), 0
    if len(scored) > max_bars:
        half = max_bars // 2
        shown, hidden = scored[:half] + scored[-half:], len(scored) - 2 * half
    fig = _figure(8.0, min(40.0, 1.6 + 0.26 * max(len(shown), 1)))
    ax = fig.add_subplot()
    positions = list(range(len(shown)))
    accuracies = [100.0 * r["accuracy"] for r in shown]
    colours = ["#c0392b" if a < 50 else "#2e86c1" for a in accuracies]
    ax.barh(positions, accuracies, color=colours)
    ax.set_yticks(positions)
    ax.set_yticklabels([f"{r['name']} (n={r['support']})" for r in shown], fontsize=8)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # the worst class on top, no empty rows
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy (%)")
    for y, a in zip(positions, accuracies, strict=True):
        ax.text(min(a + 1.0, 92.0), y, f"{a:.1f}", va="center", fontsize=7)
    if hidden:
        half = len(shown) // 2
        ax.axhline(half - 0.5, color="grey", linestyle="--", linewidth=1)
        title = f"{title}: worst {half} and best {half} of {len(scored)} classes ({hidden} not shown)"
    else:
        title = f"{title} ({len(scored)} classes)"
    ax.set_title(title, fontsize=10)
    path = Path(path)
    fig.savefig(path)
    return path


def top_confusions(confusion: torch.Tensor, class_names: Sequence[str], top: int = 100) -> list[dict[str, Any]]:
    """The most frequent (true, predicted) pairs of different classes, most frequent first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    support = confusion.sum(1)
    flat = off.flatten()
    count = int((flat > 0).sum())
    order = flat.argsort(descending=True, stable=True)[: min(top, count)]
    K = confusion.shape[0]
    out = []
    for index in order.tolist():
        true, pred = divmod(index, K)
        out.append(
            {
                "true": true,
                "true_name": class_names[true],
                "predicted": pred,
                "predicted_name": class_names[pred],
                "count": int(off[true, pred]),
                "fraction_of_true": float(off[true, pred]) / max(1, int(support[true])),
            }
        )
    return out


def write_confusions(
    confusion: torch.Tensor, class_names: Sequence[str], folder: str | Path, top: int = 100
) -> tuple[Path, list[dict[str, Any]] | None]:
    """``confusion_matrix.png`` up to ``MAX_MATRIX_CLASSES`` classes; above that ``top_confusions.csv``, the ``top``
    most frequent confusions (returned too, for a W&B table). Returns the file written and the rows (None for the
    picture)."""
    folder = Path(folder)
    K = confusion.shape[0]
    if K <= MAX_MATRIX_CLASSES:
        return plot_confusion_matrix(confusion, class_names, folder / "confusion_matrix.png"), None
    rows = top_confusions(confusion, class_names, top)
    path = folder / "top_confusions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["true", "true_name", "predicted", "predicted_name", "count", "fraction_of_true"]
        )
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "%d classes: more than %d, so no confusion-matrix picture; the %d most frequent confusions are in %s",
        K,
        MAX_MATRIX_CLASSES,
        len(rows),
        path,
    )
    return path, rows
