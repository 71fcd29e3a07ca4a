"""Opening rosbag2 recordings, including the ones their recorder never closed.

A robot's recording often ends without being closed: the battery dies, the recorder is killed or the
machine is switched off. rosbag2 writes a bag's metadata.yaml only when it closes it, and an MCAP file's
index and footer last, so such a recording has no metadata.yaml and its MCAP file stops part way through
a chunk. rosbags refuses both ("Expected metadata file ...", "File end magic is invalid"), which lost the
whole drive. `open_bag` reads what the recording holds instead: an SQLite file directly, an MCAP file
record by record up to the last complete one; a warning names what was missing and how much was read.
"""
from __future__ import annotations

import logging
import mmap
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

LOG = logging.getLogger("densernet")
MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x03, 0x04, 0x05, 0x06
IDL_SEPARATOR = "=" * 80 + "\n"


class BagError(ValueError):
    """A recording that is missing or cannot be read, named with what is wrong."""


@contextmanager
def open_bag(bag: str | Path) -> Iterator:
    """A reader over a rosbag2 folder or data file: rosbags' AnyReader when the recording was closed, else
    an `UnclosedBag` over what it holds. Readers give `connections` (`.topic`, `.msgtype`),
    `messages(connections=...)` yielding (connection, time in ns, raw bytes), and `deserialize(raw, msgtype)`."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    if not bag.exists():
        raise BagError(f"rosbag not found: {bag}")
    try:
        reader = AnyReader([bag])
        reader.open()
    except Exception as exc:  # rosbags raises several error types for foreign or broken folders
        reader = _unclosed(bag, exc)
    try:
        yield reader
    finally:
        reader.close()


@dataclass
class BagMessage:
    """One message of a topic: deserialized, or the reason its bytes are not (a bad copy, bit rot)."""

    index: int               # its place among the connections' messages, from 0
    topic: str
    msg: object | None       # None where the bytes do not deserialize (`error`)
    stamp: float             # header stamp (s); the recording time where there is no header, or it is zero
    recorded: float          # the recording time (s)
    error: str | None = None


def topic_messages(reader, connections: Sequence, bag: str | Path, warn: bool = True,
                   every: int = 1) -> Iterator[BagMessage]:
    """The messages of `connections` in recording order, one way for every reader of a bag.

    A damaged message is yielded with its error, not raised (rosbags raises its own error types, which
    ended map building, localization or the extrinsic lookup there): the caller names and skips it, and
    the rest still count. A header stamp left at zero (a quick publisher, a driver on a sim clock that was
    not running) is replaced by the recording time, with a warning: taken as it is, every such message
    would be one instant, so images would all match one pose, and the filter would see no time pass.
    `warn` False: a probe of the first messages, read again in full later (warned there). `every`: only
    each `every`-th message is deserialized and yielded (its index still counts all)."""
    zero = None
    for k, (c, t, raw) in enumerate(reader.messages(connections=list(connections))):
        if k % every:
            continue
        recorded = t / 1e9
        try:
            msg = reader.deserialize(raw, c.msgtype)
        except Exception as exc:  # noqa: BLE001 - rosbags' deserializers raise their own error types
            yield BagMessage(k, c.topic, None, recorded, recorded, f"{type(exc).__name__}: {exc}")
            continue
        header = getattr(msg, "header", None)
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9 if header is not None else 0.0
        if header is not None and stamp == 0.0 and zero is None and warn:
            zero = k
            LOG.warning("%s: message %d on %s has a zero header stamp: it and any others like it are stamped with "
                        "their recording time", bag, k, c.topic)
        yield BagMessage(k, c.topic, msg, stamp or recorded, recorded)


def data_files(bag: Path) -> list[Path]:
    """A bag folder's storage files in split order (rosbag2 names them <name>_<k>.<ext>), or the file itself."""
    if bag.is_file():
        return [bag]

    def split_index(p: Path) -> tuple[int, str]:
        m = re.search(r"_(\d+)$", p.stem)
        return (int(m.group(1)) if m else 0, p.name)

    return sorted([p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")], key=split_index)


def _unclosed(bag: Path, exc: Exception):
    """The reader for a recording that rosbags could not open, if it is one its recorder did not close."""
    from rosbags.highlevel import AnyReader

    files = data_files(bag)
    closed = bag.is_dir() and (bag / "metadata.yaml").is_file()
    kinds = {p.suffix for p in files}
    if not files or len(kinds) > 1:
        raise BagError(f"{bag}: cannot open as a rosbag2: {exc}") from exc
    if kinds == {".db3"}:
        # SQLite survives its writer's death (each write is a transaction); only metadata.yaml is missing.
        if closed or len(files) > 1:
            raise BagError(f"{bag}: cannot open as a rosbag2: {exc}" + ("" if closed else
                           f" ({len(files)} split files and no metadata.yaml: `ros2 bag reindex {bag}` writes it)"))
        try:
            reader = AnyReader([files[0]])
            reader.open()
        except Exception as inner:
            raise BagError(f"{bag}: cannot open as a rosbag2: {exc}; its data file {files[0].name}: {inner}") from exc
        LOG.warning("%s: no metadata.yaml (the recording was not closed); read its data file %s directly "
                    "(`ros2 bag reindex %s` writes the metadata)", bag, files[0].name, bag)
        return reader
    try:
        reader = UnclosedBag(files)
    except Exception as inner:  # not MCAP, or garbage where a record should be
        raise BagError(f"{bag}: cannot open as a rosbag2: {exc}; read record by record: {inner}") from exc
    if not reader.message_count:
        raise BagError(f"{bag}: cannot open as a rosbag2: {exc}; read record by record it holds no complete message")
    LOG.warning("%s: %s; read record by record: %d messages on %d topics%s", bag,
                f"rosbags cannot open it ({exc})" if closed else "the recording was not closed (no metadata.yaml)",
                reader.message_count, len(reader.connections),
                "".join(f"; {f.name} ({size:,} bytes) ends in a record cut at byte {pos:,}, the rest lost"
                        for f, (pos, size) in reader.cut.items()))
    return reader


@dataclass(frozen=True)
class Topic:
    """One topic of an UnclosedBag, as rosbags' Connection is used here."""
    id: int
    topic: str
    msgtype: str


class UnclosedBag:
    """The messages of MCAP files read front to back, as far as their records are complete. A chunk cut
    part way gives the complete messages it holds if it is uncompressed, none if it is compressed."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self.cut: dict[Path, tuple[int, int]] = {}  # file -> (bytes read, size) for a file that ends part way
        self._topics: dict[tuple[str, str], Topic] = {}
        self._schemas: dict[str, tuple[str, str]] = {}  # type name -> (encoding, definition)
        self.message_count = 0
        for _ in self._records(count=True):
            pass
        self.typestore = self._typestore()

    @property
    def connections(self) -> list[Topic]:
        return list(self._topics.values())

    def messages(self, connections: Sequence[Topic] = ()) -> Iterator[tuple[Topic, int, bytes]]:
        """As AnyReader.messages: those of `connections`, or every message when none are given."""
        wanted = {c.id for c in connections} or None
        for topic, stamp, data in self._records(count=False):
            if wanted is None or topic.id in wanted:
                yield topic, stamp, data

    def deserialize(self, raw: bytes, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        pass

    def _records(self, count: bool) -> Iterator[tuple[Topic, int, bytes]]:
        """Every complete message in file order (by log time within a chunk, as rosbags reads one)."""
        for path in self.files:
            if path.stat().st_size < len(MCAP_MAGIC):
                raise BagError(f"{path.name} is empty or not an MCAP file")
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data[:len(MCAP_MAGIC)] != MCAP_MAGIC:
                    raise BagError(f"{path.name} is not an MCAP file")
                yield from self._file_records(path, data, count)

    def _file_records(self, path: Path, data, count: bool) -> Iterator[tuple[Topic, int, bytes]]:
        channels: dict[int, Topic] = {}
        schemas: dict[int, str] = {}
        pos, end = len(MCAP_MAGIC), len(data)
        while pos + 9 <= end:  # a record: opcode, length, body (the file's closing magic is shorter)
            op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            body = pos + 9
            complete = body + length <= end
            if op == OP_CHUNK:
                inner = self._chunk_records(data, body, min(body + length, end))
                yield from self._read(inner, channels, schemas, count, in_chunk=True)
            elif complete:
                yield from self._read([(op, data[body:body + length])], channels, schemas, count, in_chunk=False)
            if not complete:
                self.cut[path] = (pos, end)
                break
            pos = body + length

    def _chunk_records(self, data: bytes, start: int, stop: int) -> list[tuple[int, bytes]]:
        """The complete records inside a chunk (all of them unless the chunk is cut and uncompressed)."""
        if start + 32 > stop:
            return []
        _, _, size, _ = struct.unpack_from("<QQQI", data, start)
        n = struct.unpack_from("<I", data, start + 28)[0]
        compression = data[start + 32:start + 32 + n].decode()
        p = start + 32 + n
        if p + 8 > stop:
            return []
        length = struct.unpack_from("<Q", data, p)[0]
        payload = data[p + 8:min(p + 8 + length, stop)]
        if len(payload) < length and compression:
            return []  # a compressed chunk cut part way cannot be decoded
        if compression:
            payload = _decompress(payload, compression, size)
        records, q = [], 0
        while q + 9 <= len(payload):
            op, rec_len = payload[q], struct.unpack_from("<Q", payload, q + 1)[0]
            if q + 9 + rec_len > len(payload):
                break
            records.append((op, payload[q + 9:q + 9 + rec_len]))
            q += 9 + rec_len
        return records

    def _read(self, records, channels: dict[int, Topic], schemas: dict[int, str], count: bool,
              in_chunk: bool) -> Iterator[tuple[Topic, int, bytes]]:
        found = []
        for op, body in records:
            if op == OP_SCHEMA:
                sid = struct.unpack_from("<H", body)[0]
                name, p = _string(body, 2)
                encoding, p = _string(body, p)
                n = struct.unpack_from("<I", body, p)[0]
                schemas[sid] = name
                self._schemas.setdefault(name, (encoding, body[p + 4:p + 4 + n].decode()))
            elif op == OP_CHANNEL:
                cid, sid = struct.unpack_from("<HH", body)
                topic, _ = _string(body, 4)
                msgtype = schemas.get(sid, "")
                key = (topic, msgtype)
                if key not in self._topics:
                    self._topics[key] = Topic(len(self._topics), topic, msgtype)
                channels[cid] = self._topics[key]
            elif op == OP_MESSAGE and len(body) >= 22:
                cid, _, log_time, _ = struct.unpack_from("<HIQQ", body)
                if cid in channels:
                    if count:  # the first pass only counts: no copy of the message's bytes
                        self.message_count += 1
                    else:
                        found.append((log_time, channels[cid], body[22:]))
        if in_chunk:
            found.sort(key=lambda m: m[0])
        for log_time, topic, payload in found:
            yield topic, log_time, payload

    def _typestore(self):
        """The file's own message definitions over the ROS 2 types rosbags knows."""
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        types = dict(get_typestore(Stores.LATEST).fielddefs)
        for name, (encoding, text) in self._schemas.items():
            try:
                if encoding == "ros2msg":
                    types.update(get_types_from_msg(text, name))
                elif encoding == "ros2idl":
                    for part in text.split(IDL_SEPARATOR)[1:] if text.startswith(IDL_SEPARATOR) else [text]:
                        types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
            except Exception as exc:  # a definition rosbags cannot parse: keep its built-in one, if any
                LOG.debug("%s: definition not read (%s); built-in used", name, exc)
        store = get_typestore(Stores.EMPTY)
        store.register(types)
        return store


def _string(body: bytes, p: int) -> tuple[str, int]:
    n = struct.unpack_from("<I", body, p)[0]
    return body[p + 4:p + 4 + n].decode(), p + 4 + n


def _decompress(payload: bytes, compression: str, size: int) -> bytes:
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # what rosbags installs before 3.14
        return zstd.decompress(payload)
    if compression == "lz4":
        from lz4.frame import decompress
        return decompress(payload)
    raise BagError(f"unsupported MCAP chunk compression {compression!r}")
