"""Row-group sizes of a parquet file, read from its footer (no pyarrow: it is not in the app's
requirements, and importing it costs ~0.3 s and ~45 MB).

polars' streaming reader decodes a parquet file one whole row group at a time, so preparation's
memory follows the largest row group; polars does not expose them. The footer is a Thrift
compact-protocol `FileMetaData`; this reads field 4 (`row_groups`) and, in each `RowGroup`,
fields 2 (`total_byte_size`, uncompressed) and 3 (`num_rows`), skipping everything else.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

MAGIC = b"PAR1"
# Compact-protocol type ids
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)


class FooterError(ValueError):
    """The footer is missing, encrypted or malformed."""


class RowGroup(NamedTuple):
    rows: int
    bytes: int  # uncompressed size of its column chunks


def row_groups(path: Path) -> list[RowGroup]:
    """Rows and uncompressed bytes of each row group, in file order."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 12:
            raise FooterError("file too short for a parquet footer")
        f.seek(size - 8)
        tail = f.read(8)
        if tail[4:] != MAGIC:
            raise FooterError("no parquet footer (encrypted footers are not supported)")
        length = struct.unpack("<I", tail[:4])[0]
        if length > size - 12:
            raise FooterError("footer length is larger than the file")
        f.seek(size - 8 - length)
        return _Reader(f.read(length)).file_metadata()


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise FooterError("footer ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise FooterError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def fields(self):
        """(field id, type) of each field of the struct at the current position, until STOP."""
        last = 0
        while True:
            header = self.byte()
            kind = header & 0x0F
            if kind == _STOP:
                return
            delta = header >> 4
            last = last + delta if delta else self.zigzag()
            yield last, kind

    def list_header(self) -> tuple[int, int]:
        header = self.byte()
        count = header >> 4
        if count == 15:
            count = self.varint()
        return count, header & 0x0F

    def skip(self, kind: int) -> None:
        if kind in (_TRUE, _FALSE):
            return
        if kind == _BYTE:
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _BINARY:
            length = self.varint()  # read before adding: `pos += varint()` would lose the varint's bytes
            self.pos += length
        elif kind in (_LIST, _SET):
            count, elem = self.list_header()
            for _ in range(count):
                self.skip_element(elem)
        elif kind == _MAP:
            count = self.varint()
            if count:
                kv = self.byte()
                for _ in range(count):
                    self.skip_element(kv >> 4)
                    self.skip_element(kv & 0x0F)
        elif kind == _STRUCT:
            for _, k in self.fields():
                self.skip(k)
        else:
            raise FooterError(f"unknown thrift type {kind}")
        if self.pos > len(self.data):
            raise FooterError("footer ends early")

    def skip_element(self, kind: int) -> None:
        if self.pos >= len(self.data):  # a damaged count must not loop far past the end
            raise FooterError("footer ends early")
        if kind in (_TRUE, _FALSE):  # booleans inside containers take one byte each
            self.pos += 1
        else:
            self.skip(kind)

    def file_metadata(self) -> list[RowGroup]:
        sizes = None
        for fid, kind in self.fields():
            if fid == 4 and kind == _LIST:
                count, elem = self.list_header()
                if elem != _STRUCT:
                    raise FooterError("row_groups is not a list of structs")
                sizes = [self.row_group() for _ in range(count)]
            else:
                self.skip(kind)
        if sizes is None:
            raise FooterError("footer has no row groups field")
        return sizes

    def row_group(self) -> RowGroup:
        rows = size = None
        for fid, kind in self.fields():
            if fid == 2 and kind == _I64:
                size = self.zigzag()
            elif fid == 3 and kind == _I64:
                rows = self.zigzag()
            else:
                self.skip(kind)
        if rows is None or rows < 0 or size is None or size < 0:
            raise FooterError("a row group has no row count or size")
        return RowGroup(rows, size)
