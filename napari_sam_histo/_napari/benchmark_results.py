"""The Benchmark dock's results, filled in after every image of a run: the samples skipped and why
(folded under a toggle, hidden while there are none), the table of each method's scores (clicks to
reach each target IoU, seconds per click, failures), and the mIoU-per-click plot, which takes the
room there is but never less than ``PLOT_MIN_HEIGHT``."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
)

from ..evaluation.report import threshold_label

PLOT_MIN_HEIGHT = 200  # px: the mIoU curve stays readable however crowded the dock area is


def fit_height(table: QTableWidget, most_rows: int = 4) -> None:
    """As tall as its rows, up to ``most_rows`` (then it scrolls): no empty grey box."""
    rows = sum(table.rowHeight(r) for r in range(min(table.rowCount(), most_rows)))
    scrolls = table.rowCount() and table.horizontalScrollBarPolicy() != Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    table.setFixedHeight(table.horizontalHeader().sizeHint().height() + rows + 2 * table.frameWidth()
                         + (table.horizontalScrollBar().sizeHint().height() if scrolls else 0))


class BenchmarkResults:
    """The results' widgets, added one under another to the dock's layout (the plot stretches)."""

    def __init__(self, layout: QVBoxLayout) -> None:
        self.skipped_toggle = QToolButton()
        self.skipped_toggle.setCheckable(True)
        self.skipped_toggle.toggled.connect(self._show_skipped_list)
        self.skipped_table = QTableWidget(0, 2)
        self.skipped_table.setHorizontalHeaderLabels(["Sample", "Reason"])
        self.skipped_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.skipped_table.verticalHeader().setVisible(False)
        self.skipped_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.skipped_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # reasons: tooltips
        layout.addWidget(self.skipped_toggle)
        layout.addWidget(self.skipped_table)
        self.show_skipped({})

        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(self.table)
        fit_height(self.table)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(PLOT_MIN_HEIGHT)
        layout.addWidget(self.canvas, stretch=1)  # the plot takes the room there is

    def _show_skipped_list(self, shown: bool) -> None:
        self.skipped_table.setVisible(shown and self.skipped_table.rowCount() > 0)
        self.skipped_toggle.setText(f"Skipped ({self.skipped_table.rowCount()}) " + ("▾" if shown else "▸"))

    def show_skipped(self, skipped: dict[str, str]) -> None:
        """The skipped samples and why, under the status (hidden while there are none)."""
        self.skipped_table.setRowCount(len(skipped))
        for row, (sample, reason) in enumerate(skipped.items()):
            self.skipped_table.setItem(row, 0, QTableWidgetItem(sample))
            item = QTableWidgetItem(reason)
            item.setToolTip(reason)
            self.skipped_table.setItem(row, 1, item)
        self.skipped_table.resizeRowsToContents()
        fit_height(self.skipped_table, most_rows=5)
        self.skipped_toggle.setVisible(bool(skipped))
        self._show_skipped_list(self.skipped_toggle.isChecked())

    def show_summary(self, summary: dict) -> None:
        """The methods' scores in the table and their mIoU per click in the plot."""
        thresholds = summary["thresholds"]
        columns = ([f"NoC@{threshold_label(t)}" for t in thresholds] + ["SPC(s)", "SPC e2e(s)"]
                   + [f"NoF/n@{threshold_label(t)}" for t in thresholds if t >= 0.85] + ["n"])
        keys = ([f"noc@{threshold_label(t)}" for t in thresholds] + ["spc_decoder_s", "spc_total_s"]
                + [f"nof_per_n@{threshold_label(t)}" for t in thresholds if t >= 0.85] + ["n_samples"])
        methods = summary["methods"]
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(methods))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setVerticalHeaderLabels(list(methods))
        for row, m in enumerate(methods.values()):
            for column, key in enumerate(keys):
                value = m.get(key)
                text = "-" if value is None else (str(value) if isinstance(value, int) else f"{value:.3f}")
                self.table.setItem(row, column, QTableWidgetItem(text))
        fit_height(self.table)
        from matplotlib.ticker import MaxNLocator

        self.figure.clear()
        axes = self.figure.add_subplot(111)
        for name, m in methods.items():
            curve = m["miou_per_click"]
            if curve:
                axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=2, label=name)
        axes.set_xlabel("clicks")
        axes.set_ylabel("mIoU")
        axes.set_ylim(0, 1)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend(fontsize=7, loc="lower right")
        self.figure.tight_layout()
        self.canvas.draw_idle()
