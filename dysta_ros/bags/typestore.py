"""Message types for reading and writing bags: ROS 2 Kilted's plus this package's msg/."""

from __future__ import annotations

import contextlib
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


def _definitions(connection: Connection) -> dict:
    """Return the types a connection's embedded definition declares (empty: none embedded)."""
    definition = connection.msgdef
    if definition.format == MessageDefinitionFormat.MSG and definition.data:
        return get_types_from_msg(definition.data, connection.msgtype)
    types = {}
    if definition.format == MessageDefinitionFormat.IDL and definition.data:
        for block in definition.data.split("=" * 80 + "\n"):
            if block.strip():
                types.update(get_types_from_idl(block.split("\n", 1)[1]
                                                if block.startswith("IDL: ") else block))
    return types


def typestore_for_bag(connections: list[Connection]) -> tuple[Typestore, dict[str, str]]:
    """Return a typestore for a bag and, per topic it cannot decode, why.

    A bag's own definitions describe the bytes it holds (it may come from another ROS
    distribution); bags without them (old sqlite3 ones) fall back to Kilted's definitions.
    One topic's bad definition only makes that topic unreadable.
    """
    types = dict(package_typestore().fielddefs)
    unreadable = {}
    for connection in connections:
        try:
            types.update(_definitions(connection))
        except Exception as exc:  # rosbags' parsers raise several kinds
            unreadable[connection.topic] = (f"its {connection.msgtype} definition does not "
                                            f"parse: {type(exc).__name__}: {exc}")
    typestore = get_typestore(Stores.EMPTY)
    try:
        typestore.register(types)
    except Exception:  # an inconsistent set: keep the package's types, add the bag's one by one
        typestore = get_typestore(Stores.EMPTY)
        typestore.register(dict(package_typestore().fielddefs))
        for connection in connections:
            if connection.topic not in unreadable:
                with contextlib.suppress(Exception):
                    typestore.register(_definitions(connection))
    for connection in connections:
        if connection.topic in unreadable:
            continue
        try:
            typestore.get_msgdef(connection.msgtype)
        except Exception as exc:
            unreadable[connection.topic] = (
                f"type {connection.msgtype!r} has no definition in the bag and is not a ROS 2 "
                f"Kilted or {PACKAGE} type ({type(exc).__name__}: {exc})")
    return typestore, unreadable
