"""What a node reports on /diagnostics: a plain status board, and its DiagnosticArray message.

The board knows nothing of ROS (as ros/diagnostics' cpu_monitor keeps its logic): the nodes set
entries from their threads and a timer publishes `to_message(board, stamp)`. Every entry starts
as ERROR "no report yet", so a part that never reports is visible, not silent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
NO_REPORT = "no report yet"  # every entry's message until its part first reports


@dataclass
class Entry:
    """One named status: a level, a message, and key/value details."""

    level: int = ERROR
    message: str = NO_REPORT
    values: dict[str, str] = field(default_factory=dict)


class StatusBoard:
    """Thread-safe named statuses of one node, each starting as ERROR until set."""

    def __init__(self, node_name: str, hardware_id: str, names: list[str]):
        self.node_name = node_name
        self.hardware_id = hardware_id
        self._lock = threading.Lock()
        self._entries = {name: Entry() for name in names}

    def set(self, name: str, level: int, message: str, **values):
        """Replace entry `name`: its level, message and values (stringified)."""
        with self._lock:
            self._entries[name] = Entry(level, message, {k: str(v) for k, v in values.items()})

    def update(self, name: str, **values):
        """Change some values of entry `name`, keeping its level and message."""
        with self._lock:
            self._entries[name].values.update({k: str(v) for k, v in values.items()})

    def get(self, name: str) -> Entry:
        with self._lock:
            entry = self._entries[name]
            return Entry(entry.level, entry.message, dict(entry.values))

    def snapshot(self) -> dict[str, Entry]:
        with self._lock:
            return {n: Entry(e.level, e.message, dict(e.values)) for n, e in self._entries.items()}


class CoreLogBridge(logging.Handler):
    """Forward the core's Python log records to a node's logger, and warnings to a board entry.

    The core (policy/, tokens/) logs with `logging` and knows nothing of ROS; without this its
    warnings (a checkpoint run on a layout it was not trained on, a gate with random weights)
    would reach stderr only, never /rosout or /diagnostics where an operator looks.
    """

    def __init__(self, node_logger, board: StatusBoard, entry: str, package_logger: str = "dysta_ros"):
        super().__init__(logging.INFO)
        self.node_logger, self.board, self.entry = node_logger, board, entry
        self.board.set(entry, OK, "no warnings from the policy core")
        self.package_logger = logging.getLogger(package_logger)
        if self.package_logger.getEffectiveLevel() > logging.INFO:
            self.package_logger.setLevel(logging.INFO)
        self.package_logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.node_logger.warning(message)
            self.board.set(self.entry, WARN, message, logger=record.name)
        else:
            self.node_logger.info(message)

    def close(self) -> None:
        self.package_logger.removeHandler(self)
        super().close()


def to_message(board: StatusBoard, stamp):
    """Return a diagnostic_msgs/DiagnosticArray of the board's entries at `stamp`."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    array = DiagnosticArray()
    array.header.stamp = stamp
    for name, entry in board.snapshot().items():
        status = DiagnosticStatus()
        status.level = bytes([entry.level])
        status.name = f"{board.node_name}: {name}"
        status.message = entry.message
        status.hardware_id = board.hardware_id
        status.values = [KeyValue(key=k, value=v) for k, v in entry.values.items()]
        array.status.append(status)
    return array
