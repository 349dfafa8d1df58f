"""What an operator reads from a terminal: one status line, and diagnostics as they change.

Works on statuses named as /diagnostics names them (`policy_node: inputs`), from the boards of
nodes in this process (`dysta-ros run`) or from DiagnosticArray messages (`dysta-ros diag`).
Plain Python, no ROS: the nodes' boards and the messages are turned into the same mapping.
"""

from __future__ import annotations

from dysta_ros.nodes.diagnostics import LEVEL_NAMES, NO_REPORT, OK, Entry, StatusBoard

# Where a hold shows first: the policy's inputs and steps, then the executor's commands.
HOLD_SOURCES = ("policy_node: inputs", "policy_node: inference", "chunk_executor: commands")


def board_statuses(*boards: StatusBoard) -> dict[str, Entry]:
    """The boards' entries, named as on /diagnostics."""
    return {f"{board.node_name}: {name}": entry
            for board in boards for name, entry in board.snapshot().items()}


def message_statuses(array) -> dict[str, Entry]:
    """A diagnostic_msgs/DiagnosticArray's statuses as entries."""
    return {status.name: Entry(_level(status.level), status.message,
                               {kv.key: kv.value for kv in status.values}) for status in array.status}


def _level(level) -> int:
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def status_line(statuses: dict[str, Entry]) -> str:
    """`active | dysta | 9.8 Hz | model 12.3 ms | frame age 40 ms | commanding`, or what it holds on."""
    lifecycle = statuses.get("policy_node: lifecycle")
    inference = statuses.get("policy_node: inference")
    values = inference.values if inference is not None else {}
    parts = [lifecycle.message if lifecycle else "policy_node: no report",
             (lifecycle.values.get("strategy") if lifecycle else None) or values.get("strategy", "-")]
    if "rate_hz" in values:
        parts += [f"{float(values['rate_hz']):.1f} Hz", f"model {float(values['model_ms']):.1f} ms",
                  f"frame age {float(values['frame_age_at_start_ms']):.0f} ms"]
    else:
        parts.append("no step yet")
    parts.append(hold_reason(statuses) or "commanding")
    return " | ".join(parts)


def hold_reason(statuses: dict[str, Entry]) -> str | None:
    """`holding: <why> (<where>)` from the first source that is not OK; None when none holds."""
    for name in HOLD_SOURCES:
        entry = statuses.get(name)
        if entry is not None and entry.level != OK:
            why = entry.message.removeprefix("holding: ").removeprefix("holding, ")
            return f"holding: {why} ({name})"
    return None


class ChangeLog:
    """Remembers each status's level and message; `changes()` returns lines for what changed.

    A status that has not reported yet (the board's initial ERROR "no report yet") is not a
    change worth a line: it shows once it reports, or in the status line's hold reason.
    """

    def __init__(self):
        self.seen: dict[str, tuple[int, str]] = {}

    def changes(self, statuses: dict[str, Entry]) -> list[str]:
        lines = []
        for name, entry in statuses.items():
            now = (entry.level, entry.message)
            if name not in self.seen and entry.message == NO_REPORT:
                continue
            if self.seen.get(name) != now:
                lines.append(format_status(name, entry))
                self.seen[name] = now
        return lines


def format_status(name: str, entry: Entry) -> str:
    """`diagnostics: WARN policy_node: inputs: holding, ...` (not a log line: no `[WARN]`)."""
    return f"diagnostics: {LEVEL_NAMES.get(entry.level, entry.level)} {name}: {entry.message}"


class StatusPrinter:
    """Print diagnostics changes as they happen and the status line every `period_s` seconds.

    On a terminal the status line is rewritten in place; elsewhere (a log file, a test) each
    one is a line of its own. `period_s` 0: changes only.
    """

    def __init__(self, statuses, stream, period_s: float = 1.0, clock=None):
        import time

        self.statuses, self.stream, self.period_s = statuses, stream, period_s
        self.clock = clock or time.monotonic
        self.log = ChangeLog()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.next_line = 0.0
        self.shown = ""  # the status line on screen (terminal only)

    def tick(self) -> None:
        statuses = self.statuses()
        changes = self.log.changes(statuses)
        if changes:
            self._clear()
            for line in changes:
                self.stream.write(line + "\n")
        now = self.clock()
        if self.period_s > 0 and (now >= self.next_line or (changes and self.tty)):
            self.next_line = now + self.period_s
            line = status_line(statuses)
            if self.tty:
                self.stream.write("\r" + line.ljust(len(self.shown)))
                self.shown = line
            else:
                self.stream.write(f"status: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = ""

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * len(self.shown) + "\r")
            self.shown = ""
