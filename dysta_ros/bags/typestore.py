"""Message types for reading and writing bags: ROS 2 Kilted's plus this package's msg/."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from dysta_ros.errors import BagError

PACKAGE = "dysta_ros"


def find_msg_dir() -> Path:
    """Return the directory holding this package's .msg files (source tree or install space)."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    prefixes = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sys.prefix]
    candidates += [Path(p) / "share" / PACKAGE / "msg" for p in prefixes if p]
    for candidate in candidates:
        if any(candidate.glob("*.msg")):
            return candidate
    raise BagError(f"cannot find {PACKAGE}'s msg/ directory; looked in "
                   + ", ".join(str(c) for c in candidates))


@functools.cache
def package_typestore() -> Typestore:
    """Return ROS 2 Kilted's types with this package's messages registered from msg/."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for msg_file in sorted(find_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(msg_file.read_text(), f"{PACKAGE}/msg/{msg_file.stem}"))
    typestore.register(types)
    return typestore


def typestore_for_bag(connections: list[Connection]) -> Typestore:
    """Return a typestore for a bag: its embedded definitions first, the package's otherwise.

    A bag's own definitions describe the bytes it holds (it may come from another ROS
    distribution); bags without them (old sqlite3 ones) fall back to Kilted's definitions.
    """
    types = dict(package_typestore().fielddefs)
    for connection in connections:
        definition = connection.msgdef
        if definition.format == MessageDefinitionFormat.MSG and definition.data:
            types.update(get_types_from_msg(definition.data, connection.msgtype))
        elif definition.format == MessageDefinitionFormat.IDL and definition.data:
            separator = "=" * 80 + "\n"
            for block in definition.data.split(separator):
                if block.strip():
                    types.update(get_types_from_idl(block.split("\n", 1)[1]
                                                    if block.startswith("IDL: ") else block))
    typestore = get_typestore(Stores.EMPTY)
    typestore.register(types)
    return typestore
