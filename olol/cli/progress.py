"""Progress of long CLI operations: a pull's bars (per node and for the cluster, with
bytes, speed and time left) and a waiting line for the others (``olol jobs wait``,
``olol models optimize --apply``, ``olol maintenance run``).

In a terminal they are drawn with ``rich`` and redrawn in place; elsewhere (a pipe, a
file, CI, ``TERM=dumb``) a pull prints plain one-line records, one per change of status
or per 10 %, and a wait prints one line per change of state, never an escape code.

Nothing here starts a thread: the display is redrawn when progress arrives (a pull) or
from the caller's own polling loop (:meth:`Waiting.tick`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

BAR_WIDTH = 30
SPEED_WINDOW_S = 10.0  # speeds are measured over this much of the latest progress
REDRAW_EVERY_S = 0.1  # at most this often, except when a status changes
CLUSTER = "cluster"


def is_terminal(out: TextIO) -> bool:
    """Whether ``out`` is a terminal that can be redrawn in place."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def _console(out: TextIO, width: int | None) -> Any:
    from rich.console import Console

    return Console(file=out, force_terminal=True, width=width, highlight=False,
                   soft_wrap=False)


@dataclass
class _Row:
    """One row of a pull: a node's bytes over every layer seen so far, or the cluster's."""

    status: str = ""
    completed: int = 0
    total: int = 0
    layer: str | None = None  # records without node_* totals: the layer being counted
    task: Any = None  # the rich task id
    error: str | None = None


class ProgressView:
    """Renders a pull's progress records (``POST /olol/v1/models/pull``, see
    :mod:`olol.registry.pulls`): a bar per node and one for the cluster in a terminal,
    plain lines otherwise.

    :param out: where to write (stdout).
    :param tty: draw bars (True) or print plain lines (False).
    :param clock: monotonic seconds, for the speeds and the redraw pace.
    :param width: the terminal width (None: asked from the terminal).
    """

    def __init__(self, out: TextIO, tty: bool, clock: Callable[[], float] = time.monotonic,
                 width: int | None = None) -> None:
        self.out, self.tty, self.clock, self.width = out, tty, clock, width
        self.rows: dict[str, _Row] = {}
        self._last_plain: dict[str, str] = {}
        self._bars: Any = None
        self._drawn_at: float | None = None

    # -- input ---------------------------------------------------------------------------

    def feed(self, record: dict) -> None:
        node = record.get("node")
        if not isinstance(node, str) or not node:
            node = CLUSTER
        if node == CLUSTER:
            self._row(CLUSTER)
            for name in record.get("nodes") or ():
                if isinstance(name, str) and "status" in record and "error" not in record \
                        and record.get("status") != "success":
                    self._row(name).status = self._row(name).status or "waiting"
        row = self._row(node)
        changed = self._apply(node, row, record)
        if node != CLUSTER:
            c = self._row(CLUSTER)
            if isinstance(record.get("cluster_total"), int):
                c.total = record["cluster_total"]
                c.completed = int(record.get("cluster_completed") or 0)
            else:  # an older proxy: the sum of the rows
                nodes = self._nodes().values()
                c.total = sum(r.total for r in nodes)
                c.completed = sum(min(r.completed, r.total) for r in nodes)
            status = self._cluster_status()
            changed = changed or status != c.status
            c.status = status
        if self.tty:
            self._draw(changed)
        else:
            self._plain(node, row)
            if node != CLUSTER:
                self._plain(CLUSTER, self.rows[CLUSTER])

    def _row(self, node: str) -> _Row:
        if node not in self.rows:
            self.rows[node] = _Row()
        return self.rows[node]

    def _apply(self, node: str, row: _Row, record: dict) -> bool:
        before = row.status
        status = record.get("status")
        if isinstance(status, str):
            row.status = status
        if node == CLUSTER and row.status == "pulling manifest" and self._nodes():
            row.status = self._cluster_status()
        if record.get("node_error"):
            row.error = str(record["node_error"])
            row.status = f"failed: {row.error}"
        if "error" in record:
            row.error = str(record["error"])
            row.status = f"error: {row.error}"
        if isinstance(record.get("node_total"), int):
            row.total = record["node_total"]
            row.completed = int(record.get("node_completed") or 0)
        elif isinstance(record.get("total"), int) and node != CLUSTER:
            layer = record.get("digest") if isinstance(record.get("digest"), str) else None
            if layer != row.layer:  # an older proxy: count layer by layer
                row.layer, row.completed = layer, 0
                self._restart(row)
            row.total = record["total"]
            row.completed = int(record.get("completed") or 0)
        if row.status in ("success", "node succeeded") and row.total:
            row.completed = row.total
        return row.status != before

    def _nodes(self) -> dict[str, _Row]:
        return {n: r for n, r in self.rows.items() if n != CLUSTER}

    def _cluster_status(self) -> str:
        cluster = self.rows.get(CLUSTER)
        if cluster is not None and (cluster.status == "success" or cluster.error):
            return cluster.status
        nodes = self._nodes()
        done = sum(1 for r in nodes.values() if r.status in ("success", "node succeeded"))
        failed = sum(1 for r in nodes.values() if r.error)
        text = f"pulling on {len(nodes)} node(s), {done} done"
        return text + (f", {failed} failed" if failed else "")

    # -- plain lines ----------------------------------------------------------------------

    @staticmethod
    def _percent(row: _Row) -> int | None:
        if not row.total:
            return None
        return min(100, int(100 * row.completed / row.total))

    def _plain(self, node: str, row: _Row) -> None:
        pct = self._percent(row)
        bucket = "" if pct is None else f" {pct // 10 * 10}%"
        line = f"{node}: {row.status}{bucket}"
        if self._last_plain.get(node) != line:
            self._last_plain[node] = line
            self.out.write(line + "\n")
            self.out.flush()

    # -- bars -------------------------------------------------------------------------------

    def _start_bars(self) -> Any:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        name_width = max(len(n) for n in self.rows)
        self._bars = Progress(
            TextColumn(f"{{task.fields[node]:<{name_width}}}", markup=False),
            BarColumn(bar_width=BAR_WIDTH),
            TextColumn("{task.fields[percent]}", markup=False),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            console=_console(self.out, self.width), auto_refresh=False,
            speed_estimate_period=SPEED_WINDOW_S, get_time=self.clock,
            redirect_stdout=False, redirect_stderr=False)
        self._bars.start()
        return self._bars

    def _restart(self, row: _Row) -> None:
        if self._bars is not None and row.task is not None:
            self._bars.reset(row.task, total=row.total or None, completed=0)

    def _draw(self, changed: bool) -> None:
        bars = self._bars or self._start_bars()
        for node, row in self.rows.items():
            pct = self._percent(row)
            fields = {"node": node, "status": row.status,
                      "percent": "" if pct is None else f"{pct:3d}%"}
            if row.task is None:
                row.task = bars.add_task(node, total=row.total or None,
                                         completed=row.completed, **fields)
            else:
                bars.update(row.task, total=row.total or None, completed=row.completed,
                            **fields)
        now = self.clock()
        if changed or self._drawn_at is None or now - self._drawn_at >= REDRAW_EVERY_S:
            self._drawn_at = now
            bars.refresh()

    def close(self) -> None:
        """Draw the last state and give the terminal back (cursor shown)."""
        if self._bars is not None:
            self._bars.refresh()
            self._bars.stop()
            self._bars = None


class Waiting:
    """A line that says what is awaited and for how long: a spinner redrawn in place in
    a terminal (on stderr, so stdout keeps only the result), else one plain line per
    change of state.

    :param out: where to write (stderr).
    :param tty: redraw in place (True) or print plain lines (False).
    :param ticking: the caller redraws it while waiting (:meth:`sleep`, :meth:`tick`):
        a spinner and the time elapsed are shown; without, only the text (a blocking call
        would leave them frozen).
    """

    def __init__(self, out: TextIO, tty: bool, clock: Callable[[], float] = time.monotonic,
                 ticking: bool = True) -> None:
        self.out, self.tty, self.clock, self.ticking = out, tty, clock, ticking
        self._shown: str | None = None
        self._live: Any = None
        self._task: Any = None

    def show(self, text: str) -> None:
        """Say what is awaited now (a plain line only when it changed)."""
        if self.tty:
            if self._live is None:
                from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

                columns: list[Any] = [TextColumn("{task.description}", markup=False)]
                if self.ticking:
                    columns = [SpinnerColumn(), *columns, TimeElapsedColumn()]
                self._live = Progress(
                    *columns, console=_console(self.out, None),
                    auto_refresh=False, get_time=self.clock, transient=True,
                    redirect_stdout=False, redirect_stderr=False)
                self._live.start()
                self._task = self._live.add_task(text, total=None)
            self._live.update(self._task, description=text)
            self._live.refresh()
        elif text != self._shown:
            self.out.write(text + "\n")
            self.out.flush()
        self._shown = text

    def tick(self) -> None:
        """Redraw (the spinner turns, the elapsed time moves); nothing on a pipe."""
        if self._live is not None:
            self._live.refresh()

    def sleep(self, seconds: float, step: float = 0.1) -> None:
        """Wait ``seconds``, redrawing every ``step`` in a terminal."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(step if self.tty else seconds, left))
            self.tick()

    def close(self) -> None:
        """Remove the line (in a terminal) and show the cursor again."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> Waiting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
