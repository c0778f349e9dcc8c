"""``devcluster top``: the cluster live in the terminal (textual).

One row per instance, updated cell by cell in place (no redraw of the screen, so no
flicker): on every registry change at once, and every :data:`TICK` seconds for CPU,
RSS and the clients' calls/s. Keys act on the instance under the cursor; the
destructive ones (kill, stop, restart, pause, disable) ask first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Label, Static

from devcluster.cli.views import STATE_STYLE as _STATE_STYLE
from devcluster.cli.views import mib as _mib
from devcluster.cli.views import uptime as _uptime
from devcluster.console.model import FULL_REFRESH, ClusterView
from devcluster.errors import DevclusterError

#: Seconds between two samples (the issue: at least twice a second).
TICK = 0.5
BAR_WIDTH = 20
COLUMNS = (("name", "NAME"), ("state", "STATE"), ("pid", "PID"), ("address", "ADDRESS"),
           ("weight", "WEIGHT"), ("enabled", "ENABLED"), ("restarts", "RESTARTS"),
           ("uptime", "UPTIME"), ("cpu", "CPU%"), ("rss", "RSS"), ("calls", "CALLS/S"),
           ("failed", "FAILED/S"), ("share", "SHARE"))
_RUNNING = {"starting", "serving", "draining", "paused", "unhealthy"}


def cells(row: dict[str, Any], traffic: dict[str, Any], total: float) -> dict[str, Any]:
    """The table's cells for one row (rich Text where colour matters)."""
    state = row["state"] + (" (ejected)" if traffic.get("ejected_by") else "") \
        + (f" (fault: {row['fault']})" if row.get("fault") else "")
    calls = float(traffic.get("calls_per_s") or 0.0)
    filled = round(BAR_WIDTH * calls / total) if total else 0
    bar = Text("█" * filled, style="cyan") + Text("·" * (BAR_WIDTH - filled), style="dim")
    cpu = row.get("cpu_percent")
    return {
        "name": row["name"], "state": Text(state, style=_STATE_STYLE.get(row["state"], "")),
        "pid": str(row["pid"] or "-"), "address": row["address"] or "-",
        "weight": str(row["weight"]),
        "enabled": Text("yes") if row["enabled"] else Text("no", style="yellow"),
        "restarts": str(row["restarts"]), "uptime": _uptime(row.get("uptime_s") or 0),
        "cpu": "-" if cpu is None else f"{cpu:.1f}", "rss": _mib(row.get("rss_bytes") or 0),
        "calls": f"{calls:.1f}", "failed": f"{float(traffic.get('failed_per_s') or 0):.1f}",
        "share": bar,
    }


class Confirm(ModalScreen[bool]):
    """Ask before a destructive action: y / Enter confirms, n / Esc cancels."""

    BINDINGS: ClassVar = [Binding("y,enter", "answer(True)", "yes"),
                          Binding("n,escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: auto; height: auto; border: thick $error; padding: 1 2;
                         background: $surface; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Label("[b]y[/b] yes   [b]n[/b] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class TopApp(App[None]):
    """The live table of one cluster's instances."""

    TITLE = "devcluster top"
    BINDINGS: ClassVar = [
        Binding("k", "key_act('kill')", "kill"), Binding("s", "stop_start", "stop/start"),
        Binding("r", "key_act('restart')", "restart"), Binding("p", "pause_resume", "pause/resume"),
        Binding("plus,equals_sign", "weight(1)", "+weight"),
        Binding("minus", "weight(-1)", "-weight"),
        Binding("d", "toggle_enabled", "disable/enable"), Binding("q", "quit", "quit"),
    ]
    CONFIRM: ClassVar = {"kill": "SIGKILL", "stop": "graceful stop", "restart": "stop, start",
                         "pause": "SIGSTOP: a hung server", "disable": "no new calls"}

    def __init__(self, view: ClusterView, tick: float = TICK) -> None:
        super().__init__()
        self.view = view
        self.tick = tick
        #: (revision, monotonic time) of the last registry snapshot shown (bench, tests).
        self.shown: tuple[int | None, float] = (None, 0.0)

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(cursor_type="row", zebra_stripes=False)
        yield Static("", id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.sub_title = str(self.view.state_dir)
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        await asyncio.to_thread(self.view.refresh)
        await asyncio.to_thread(self.view.sample)
        self.render_rows()
        self.follow_registry()
        self.set_interval(self.tick, self.sample)

    # -- keeping the table current -----------------------------------------------------

    @work(exclusive=True, group="watch")
    async def follow_registry(self) -> None:
        while True:
            try:
                async for snapshot in self.view.registry.awatch():
                    self.view.apply(snapshot)
                    self.render_rows()
                    self.shown = (snapshot.revision, time.monotonic())
                    self.full_refresh()
            except Exception as e:  # a registry being repaired: keep the last rows
                self.say(f"registry watch failed ({e}); retrying")
            await asyncio.sleep(0.5)

    @work(exclusive=True, group="refresh")
    async def full_refresh(self) -> None:
        await asyncio.to_thread(self.view.refresh)
        self.render_rows()

    @work(exclusive=True, group="sample")
    async def sample(self) -> None:
        if time.monotonic() - self.view.last_full >= FULL_REFRESH:
            self.full_refresh()
        await asyncio.to_thread(self.view.sample)
        self.render_rows()

    def render_rows(self) -> None:
        """Update the table in place: changed cells only, rows added and removed."""
        table = self.query_one(DataTable)
        rows = self.view.rows()
        traffic = self.view.traffic()
        total = sum(float(t.get("calls_per_s") or 0) for t in traffic.values())
        names = {r["name"] for r in rows}
        for gone in [k for k in table.rows if k.value not in names]:
            table.remove_row(gone)
        added = False
        for row in rows:
            values = cells(row, traffic.get(row["name"], {}), total)
            if row["name"] not in {k.value for k in table.rows}:
                table.add_row(*values.values(), key=row["name"])
                added = True
                continue
            for key, value in values.items():
                if table.get_cell(row["name"], key) != value:
                    table.update_cell(row["name"], key, value, update_width=True)
        if added:
            table.sort("name")
        if self.view.supervisor_note:
            self.say(self.view.supervisor_note)

    def say(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    # -- the keys ----------------------------------------------------------------------

    def current(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.view.rows() if r["name"] == key), None)

    async def action_act(self, verb: str) -> None:
        row = self.current()
        if row is None:
            return
        if verb in self.CONFIRM:
            question = f"{verb} {row['name']}? ({self.CONFIRM[verb]})"
            if not await self.push_screen_wait(Confirm(question)):
                self.say(f"{verb} {row['name']}: cancelled")
                return
        self.run_action_on(row["name"], verb)

    @work(group="act")
    async def run_action_on(self, name: str, verb: str) -> None:
        try:
            await asyncio.to_thread(self.view.act, name, verb)
            self.say(f"{verb} {name}")
        except DevclusterError as e:
            self.say(f"{verb} {name}: {e}")
        self.render_rows()

    # push_screen_wait needs a worker: each key that may ask runs in one.
    @work(group="keys")
    async def action_stop_start(self) -> None:
        row = self.current()
        if row is not None:
            await self.action_act("stop" if row["state"] in _RUNNING else "start")

    @work(group="keys")
    async def action_pause_resume(self) -> None:
        row = self.current()
        if row is not None:
            await self.action_act("resume" if row["state"] == "paused" else "pause")

    @work(group="keys")
    async def action_toggle_enabled(self) -> None:
        row = self.current()
        if row is not None:
            await self.action_act("disable" if row["enabled"] else "enable")

    @work(group="keys")
    async def action_key_act(self, verb: str) -> None:
        await self.action_act(verb)

    async def action_weight(self, delta: int) -> None:
        row = self.current()
        if row is None:
            return
        weight = max(0, min(1000, row["weight"] + delta))
        try:
            await asyncio.to_thread(self.view.set_weight, row["name"], weight)
            self.say(f"{row['name']}: weight {weight}")
        except DevclusterError as e:
            self.say(f"weight {row['name']}: {e}")
        self.render_rows()
