"""The benchmark report folder: per-sample CSV, summary JSON, the paper's table, the mIoU plot.

Rows are appended to ``samples.csv`` as samples finish, and the summary files are rewritten
atomically, so an interrupted run (Ctrl-C) leaves a valid partial report that says it is partial.

A folder that already holds a report is never truncated by accident: ``existing="refuse"`` (the
default) raises an ``InputError``; ``"resume"`` carries over the samples already in ``samples.csv``
(the tallies are rebuilt from it, so the summary is that of an uninterrupted run) and appends the
rest; ``"overwrite"`` starts again. IoUs are written at full precision so that a resumed summary is
exactly the uninterrupted one. A resume is refused when the report was made with another protocol
(``RESUME_KEYS``) or on another runtime (decoder/encoder precision, device, torch or
napari-sam-histo version: one report, one runtime, the one its ``runtime`` records).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .metrics import DEFAULT_THRESHOLDS, summarize
from .runner import SampleResult
from .runtime import describe

REPORT_FILES = ("samples.csv", "summary.json")
EXISTING_CHOICES = ("refuse", "resume", "overwrite")
# Settings that change a sample's numbers: a resumed report must keep them (limit/stride may grow).
RESUME_KEYS = ("dataset", "thresholds", "max_clicks", "full_curve", "ritm_nof", "instances", "components",
               "ignore_value", "mask_suffix")


def threshold_label(t: float) -> str:
    return f"{round(t * 100):d}"


def holds_report(folder: str | Path) -> bool:
    """Whether ``folder`` already holds a benchmark report (a run there would replace it)."""
    return any((Path(folder) / name).is_file() for name in REPORT_FILES)


def free_folder_beside(folder: str | Path) -> Path:
    """``folder-2``, ``folder-3``, …: the first that does not exist, for a new report next to an old one."""
    folder = Path(folder)
    n = 2
    while folder.with_name(f"{folder.name}-{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}-{n}")


def report_samples(folder: str | Path) -> list[str]:
    """The samples a report in ``folder`` ran (status ok), in order; empty when there is none."""
    path = Path(folder) / "samples.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        ids = [row.get("sample") for row in csv.DictReader(stream) if row.get("status") == "ok"]
    return list(dict.fromkeys(i for i in ids if i))


def refuse_existing(folder: str | Path) -> None:
    """The ``InputError`` for a run that would replace the report already in ``folder``."""
    if holds_report(folder):
        raise InputError(f"The report folder {folder} already holds a benchmark report; choose another "
                         f"folder, or pass --resume to continue it or --overwrite to replace it.")


def _comparable(key: str, value):
    if key == "dataset" and value is not None:
        return str(Path(value).expanduser().resolve())
    if key == "thresholds" and value is not None:
        return sorted(float(v) for v in value)
    return value


@dataclass
class MethodTally:
    ious: list[list[float]] = field(default_factory=list)
    decoder_s: float = 0.0
    total_s: float = 0.0
    clicks: int = 0
    encoder_calls: int = 0
    encoder_calls_before: int = 0  # counted by the run that a resumed report continues
    store_loads: int | None = None  # embeddings read from the on-disk store (None: not counted)
    store_loads_before: int = 0
    fallbacks: int = 0  # clicks that showed an alternative to the usual decode (``engine.session``)
    skipped: dict[str, str] = field(default_factory=dict)


class ReportWriter:
    def __init__(self, out_dir: str | Path, methods: list[str], thresholds=DEFAULT_THRESHOLDS,
                 max_clicks: int = 20, ritm_nof: bool = False, config: dict | None = None,
                 existing: str = "refuse", runtime: dict | None = None) -> None:
        if existing not in EXISTING_CHOICES:
            raise ValueError(f"existing must be one of {EXISTING_CHOICES}, not {existing!r}")
        self.out_dir = Path(out_dir)
        if existing == "refuse":
            refuse_existing(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.methods = list(methods)
        self.thresholds = tuple(sorted(thresholds))
        self.max_clicks = max_clicks
        self.ritm_nof = ritm_nof
        self.config = dict(config or {})
        self.runtime = dict(runtime) if runtime is not None else None
        self.tallies = {m: MethodTally() for m in self.methods}
        self._csv_path = self.out_dir / "samples.csv"
        self._columns = (["method", "sample", "status", "clicks"] + [f"noc@{threshold_label(t)}" for t in self.thresholds]
                         + ["final_iou", "decoder_s_per_click", "total_s", "fallbacks", "reason"]
                         + [f"iou_{i}" for i in range(1, max_clicks + 1)])
        self.done: set[tuple[str, str]] = set()  # (method, sample) already in samples.csv
        rows = self._previous_rows() if existing == "resume" and self._csv_path.is_file() else []
        with atomic_path(self._csv_path) as tmp, open(tmp, "w", newline="") as stream:
            # Rewritten, not appended to: a line cut short by a killed run is dropped (and redone).
            writer = csv.writer(stream)
            writer.writerow(self._columns)
            writer.writerows([row.get(c, "") for c in self._columns] for row in rows)

    def _previous_rows(self) -> list[dict]:
        """The rows of the report being resumed, after checking it was made with this protocol;
        the tallies of this run's methods are rebuilt from them."""
        previous = {}
        summary_path = self.out_dir / "summary.json"
        if summary_path.is_file():
            try:
                previous = json.loads(summary_path.read_text())
            except (OSError, ValueError) as err:
                raise InputError(f"Cannot resume: {summary_path} cannot be read ({err}); choose another "
                                 f"folder or overwrite it.") from err
        made_with = previous.get("config", {})
        for key in RESUME_KEYS:
            old, new = made_with.get(key), self.config.get(key)
            if key in made_with and key in self.config and _comparable(key, old) != _comparable(key, new):
                raise InputError(f"Cannot resume the report in {self.out_dir}: it was made with {key} = {old!r}, "
                                 f"this run has {key} = {new!r}. Use the same settings, or choose another folder.")
        self._check_runtime(previous.get("runtime"))
        with open(self._csv_path, newline="") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            lines = list(reader)
        if header != self._columns:
            raise InputError(f"Cannot resume: the columns of {self._csv_path} differ from this run's (another "
                             f"--iou or --max-clicks, or an older napari-sam-histo?). Use the same settings, or "
                             f"choose another folder.")
        rows = []
        for line in lines:
            row = dict(zip(self._columns, line))
            key = (row.get("method", ""), row.get("sample", ""))
            if len(line) != len(self._columns) or key in self.done or not self._restore(row):
                continue
            self.done.add(key)
            rows.append(row)
        for name, tally in self.tallies.items():
            entry = previous.get("methods", {}).get(name, {})
            tally.encoder_calls = tally.encoder_calls_before = int(entry.get("encoder_calls") or 0)
            loads = entry.get("embeddings_from_store")
            if loads is not None:
                tally.store_loads = tally.store_loads_before = int(loads)
        return rows

    def _check_runtime(self, previous: dict | None) -> None:
        """Refuse to resume a report made with another precision, device or version: its numbers
        and seconds would mix two runtimes under one label. A report from before runtimes were
        recorded (no ``runtime``) cannot be checked and is resumed."""
        if not previous or self.runtime is None:
            return
        mismatches = [key for key in ("torch", "napari_sam_histo")
                      if key in previous and key in self.runtime and previous[key] != self.runtime[key]]
        old_methods, new_methods = previous.get("methods") or {}, self.runtime.get("methods") or {}
        mismatches += [name for name in self.methods
                       if name in old_methods and name in new_methods and old_methods[name] != new_methods[name]]
        if mismatches:
            made = "\n".join("  " + line for line in describe(previous))
            now = "\n".join("  " + line for line in describe(self.runtime))
            raise InputError(f"Cannot resume the report in {self.out_dir}: it was made on another runtime "
                             f"(it differs in {', '.join(mismatches)}).\nThe report:\n{made}\nThis run:\n{now}\n"
                             f"Resume with the same --precision and --device (and the same torch), or choose "
                             f"another folder, or pass --overwrite.")

    def _restore(self, row: dict) -> bool:
        """Count one previous row into its method's tally; False for a row that cannot be used."""
        tally = self.tallies.get(row["method"])
        if tally is None:
            return True  # a method this run does not have: the row is kept, not counted
        try:
            if row["status"] == "skipped":
                tally.skipped[row["sample"]] = row["reason"]
                return True
            clicks = int(row["clicks"])
            ious = [float(row[f"iou_{i}"]) for i in range(1, clicks + 1)]
            decoder_s = float(row["decoder_s_per_click"] or 0) * clicks
            total_s = float(row["total_s"])
            fallbacks = int(row["fallbacks"])
        except (KeyError, ValueError):
            return False
        tally.ious.append(ious)
        tally.decoder_s += decoder_s
        tally.total_s += total_s
        tally.clicks += clicks
        tally.fallbacks += fallbacks
        return True

    def _append(self, row: dict) -> None:
        with open(self._csv_path, "a", newline="") as stream:
            csv.writer(stream).writerow([row.get(c, "") for c in self._columns])

    def add(self, result: SampleResult, encoder_calls: int | None = None, store_loads: int | None = None) -> None:
        """``encoder_calls``/``store_loads``: the method's counts so far in this run (the encoder
        runs, the embeddings read from the on-disk store), added to those of a resumed report."""
        from .metrics import noc

        tally = self.tallies[result.method]
        tally.ious.append(result.ious)
        tally.decoder_s += sum(result.decoder_s)
        tally.total_s += result.total_s
        tally.clicks += len(result.ious)
        tally.fallbacks += result.fallbacks
        if encoder_calls is not None:
            tally.encoder_calls = tally.encoder_calls_before + encoder_calls
        if store_loads is not None:
            tally.store_loads = tally.store_loads_before + store_loads
        row = {"method": result.method, "sample": result.sample_id, "status": "ok", "clicks": len(result.ious),
               "final_iou": f"{result.ious[-1]:.4f}" if result.ious else "",
               "decoder_s_per_click": f"{np.mean(result.decoder_s):.5f}" if result.decoder_s else "",
               "total_s": f"{result.total_s:.4f}", "fallbacks": result.fallbacks}
        for t in self.thresholds:
            row[f"noc@{threshold_label(t)}"] = noc(result.ious, t, self.max_clicks)
        for i, value in enumerate(result.ious, start=1):
            row[f"iou_{i}"] = repr(float(value))  # full precision: a resumed run's summary is exact
        self._append(row)
        self.done.add((result.method, result.sample_id))

    def skip(self, method: str, sample_id: str, reason: str) -> None:
        self.tallies[method].skipped[sample_id] = reason
        self._append({"method": method, "sample": sample_id, "status": "skipped", "reason": reason})
        self.done.add((method, sample_id))

    def summary(self, partial: bool = False) -> dict:
        methods = {}
        for name, tally in self.tallies.items():
            entry = summarize(tally.ious, self.thresholds, self.max_clicks, self.ritm_nof)
            entry.update({
                "spc_decoder_s": tally.decoder_s / tally.clicks if tally.clicks else None,
                "spc_total_s": tally.total_s / tally.clicks if tally.clicks else None,
                "encoder_calls": tally.encoder_calls,
                "fallbacks": tally.fallbacks,
                "n_skipped": len(tally.skipped),
                "skipped": tally.skipped,
            })
            if tally.store_loads is not None:
                entry["embeddings_from_store"] = tally.store_loads
            methods[name] = entry
        summary = {"partial": partial, "thresholds": list(self.thresholds), "max_clicks": self.max_clicks,
                   "nof_variant": "ritm (noc == max_clicks)" if self.ritm_nof else "never reached",
                   "config": self.config, "methods": methods}
        if self.runtime is not None:
            summary["runtime"] = self.runtime
        return summary

    def write(self, partial: bool = False, figures: bool = True) -> dict:
        """Rewrite summary.json (cheap: after every image, so a resume knows the encoder calls) and,
        with ``figures``, table.txt and miou.png."""
        summary = self.summary(partial)
        with atomic_path(self.out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        if figures:
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


def skipped_samples(summary: dict) -> dict[str, str]:
    """sample -> reason, over all methods (a bad file is skipped by every method for one reason)."""
    skipped: dict[str, str] = {}
    for m in summary.get("methods", {}).values():
        for sample, reason in m.get("skipped", {}).items():
            skipped.setdefault(sample, reason)
    return skipped


def format_skipped(summary: dict, first: int = 5) -> str:
    """The console's account of skipped samples: the count and the first few with their reasons."""
    skipped = skipped_samples(summary)
    if not skipped:
        return ""
    lines = [f"skipped {len(skipped)} sample{'s' if len(skipped) != 1 else ''}:"]
    lines += [f"  {sample}: {reason}" for sample, reason in list(skipped.items())[:first]]
    if len(skipped) > first:
        lines.append(f"  … and {len(skipped) - first} more (all are listed in samples.csv)")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """The paper's layout: Method | NoC@80 85 90 | SPC | NoF/n@85 90, plus end-to-end SPC, the
    collapses (clicks, and in brackets samples with one: ``metrics.collapses``), the clicks shown
    with an alternative decode (``engine.session``) and n.

    SPC(s) is decoder-only seconds per click; SPCe2e(s) includes loading and the encoder, as RITM
    times it (total time / total clicks). The first line says what ran: precision, device, versions."""
    thresholds = summary["thresholds"]
    nof_thresholds = [t for t in thresholds if t >= 0.85] or list(thresholds)
    head = (f"{'Method':28}" + "".join(f"{'NoC@' + threshold_label(t):>9}" for t in thresholds)
            + f"{'SPC(s)':>9}{'SPCe2e(s)':>11}" + "".join(f"{'NoF/n@' + threshold_label(t):>11}" for t in nof_thresholds)
            + f"{'Collapses':>11}{'Fallbacks':>10}{'n':>6}")
    lines = describe(summary.get("runtime")) + [head, "-" * len(head)]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))

    for name, m in summary["methods"].items():
        lines.append(
            f"{name:28}" + "".join(fmt(m[f"noc@{threshold_label(t)}"], "9.2f") for t in thresholds)
            + fmt(m["spc_decoder_s"], "9.3f") + fmt(m["spc_total_s"], "11.3f")
            + "".join(fmt(m[f"nof_per_n@{threshold_label(t)}"], "11.2f") for t in nof_thresholds)
            + f"{m['collapses']} ({m['collapsed_samples']})".rjust(11) + f"{m['fallbacks']:10d}"
            + f"{m['n_samples']:6d}")
    if summary.get("partial"):
        lines.append("(partial: the run was interrupted)")
    return "\n".join(lines)
