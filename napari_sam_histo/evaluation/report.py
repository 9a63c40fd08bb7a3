"""The benchmark report folder: per-sample CSV, summary JSON, the paper's table, the mIoU plot.

Rows are appended to ``samples.csv`` as samples finish, and the summary files are rewritten
atomically, so an interrupted run (Ctrl-C) leaves a valid partial report that says it is partial.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .metrics import DEFAULT_THRESHOLDS, summarize
from .runner import SampleResult


def threshold_label(t: float) -> str:
    return f"{round(t * 100):d}"


@dataclass
class MethodTally:
    ious: list[list[float]] = field(default_factory=list)
    decoder_s: float = 0.0
    total_s: float = 0.0
    clicks: int = 0
    encoder_calls: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


class ReportWriter:
    def __init__(self, out_dir: str | Path, methods: list[str], thresholds=DEFAULT_THRESHOLDS,
                 max_clicks: int = 20, ritm_nof: bool = False, config: dict | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.methods = list(methods)
        self.thresholds = tuple(sorted(thresholds))
        self.max_clicks = max_clicks
        self.ritm_nof = ritm_nof
        self.config = dict(config or {})
        self.tallies = {m: MethodTally() for m in self.methods}
        self._csv_path = self.out_dir / "samples.csv"
        self._columns = (["method", "sample", "status", "clicks"] + [f"noc@{threshold_label(t)}" for t in self.thresholds]
                         + ["final_iou", "decoder_s_per_click", "total_s", "reason"]
                         + [f"iou_{i}" for i in range(1, max_clicks + 1)])
        with open(self._csv_path, "w", newline="") as stream:
            csv.writer(stream).writerow(self._columns)

    def _append(self, row: dict) -> None:
        with open(self._csv_path, "a", newline="") as stream:
            csv.writer(stream).writerow([row.get(c, "") for c in self._columns])

    def add(self, result: SampleResult, encoder_calls: int | None = None) -> None:
        from .metrics import noc

        tally = self.tallies[result.method]
        tally.ious.append(result.ious)
        tally.decoder_s += sum(result.decoder_s)
        tally.total_s += result.total_s
        tally.clicks += len(result.ious)
        if encoder_calls is not None:
            tally.encoder_calls = encoder_calls
        row = {"method": result.method, "sample": result.sample_id, "status": "ok", "clicks": len(result.ious),
               "final_iou": f"{result.ious[-1]:.4f}" if result.ious else "",
               "decoder_s_per_click": f"{np.mean(result.decoder_s):.5f}" if result.decoder_s else "",
               "total_s": f"{result.total_s:.4f}"}
        for t in self.thresholds:
            row[f"noc@{threshold_label(t)}"] = noc(result.ious, t, self.max_clicks)
        for i, value in enumerate(result.ious, start=1):
            row[f"iou_{i}"] = f"{value:.4f}"
        self._append(row)

    def skip(self, method: str, sample_id: str, reason: str) -> None:
        self.tallies[method].skipped[sample_id] = reason
        self._append({"method": method, "sample": sample_id, "status": "skipped", "reason": reason})

    def summary(self, partial: bool = False) -> dict:
        methods = {}
        for name, tally in self.tallies.items():
            entry = summarize(tally.ious, self.thresholds, self.max_clicks, self.ritm_nof)
            entry.update({
                "spc_decoder_s": tally.decoder_s / tally.clicks if tally.clicks else None,
                "spc_total_s": tally.total_s / tally.clicks if tally.clicks else None,
                "encoder_calls": tally.encoder_calls,
                "n_skipped": len(tally.skipped),
                "skipped": tally.skipped,
            })
            methods[name] = entry
        return {"partial": partial, "thresholds": list(self.thresholds), "max_clicks": self.max_clicks,
                "nof_variant": "ritm (noc == max_clicks)" if self.ritm_nof else "never reached",
                "config": self.config, "methods": methods}

    def write(self, partial: bool = False) -> dict:
        summary = self.summary(partial)
        with atomic_path(self.out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        with atomic_path(self.out_dir / "table.txt") as tmp:
            tmp.write_text(format_table(summary) + "\n")
        self._plot(summary)
        return summary

    def _plot(self, summary: dict) -> None:
        # A bare Figure with the Agg canvas, not pyplot: this runs in worker threads inside napari,
        # where pyplot's global state and backend switching are not safe.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        figure = Figure(figsize=(6, 4), dpi=110)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(111)
        for name, m in summary["methods"].items():
            curve = m["miou_per_click"]
            if curve:
                axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
        axes.set_xlabel("clicks")
        axes.set_ylabel("mIoU")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(1, self.max_clicks)
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(loc="lower right", fontsize=8)
        axes.set_title("mIoU per click" + (" (partial)" if summary.get("partial") else ""))
        figure.tight_layout()
        with atomic_path(self.out_dir / "miou.png") as tmp:
            figure.savefig(tmp, format="png")


def format_table(summary: dict) -> str:
    """The paper's layout: Method | NoC@80 85 90 | SPC | NoF/n@85 90, plus end-to-end SPC and n.

    SPC(s) is decoder-only seconds per click; SPCe2e(s) includes loading and the encoder, as RITM
    times it (total time / total clicks)."""
    thresholds = summary["thresholds"]
    nof_thresholds = [t for t in thresholds if t >= 0.85] or list(thresholds)
    head = (f"{'Method':28}" + "".join(f"{'NoC@' + threshold_label(t):>9}" for t in thresholds)
            + f"{'SPC(s)':>9}{'SPCe2e(s)':>11}" + "".join(f"{'NoF/n@' + threshold_label(t):>11}" for t in nof_thresholds)
            + f"{'n':>6}")
    lines = [head, "-" * len(head)]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))

    for name, m in summary["methods"].items():
        lines.append(
            f"{name:28}" + "".join(fmt(m[f"noc@{threshold_label(t)}"], "9.2f") for t in thresholds)
            + fmt(m["spc_decoder_s"], "9.3f") + fmt(m["spc_total_s"], "11.3f")
            + "".join(fmt(m[f"nof_per_n@{threshold_label(t)}"], "11.2f") for t in nof_thresholds)
            + f"{m['n_samples']:6d}")
    if summary.get("partial"):
        lines.append("(partial: the run was interrupted)")
    return "\n".join(lines)
