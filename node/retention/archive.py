"""The archive of deleted experiments: one JSON object per line, gzip-compressed, one file per UTC day.

    archive = Archive(Path(cfg.archive_dir))
    archive.append(records, now)          # <dir>/<YYYY-MM-DD>.jsonl.gz, fsynced before it returns
    for record in read_archive(dir): ...  # every record, the last of each experiment winning

Each append is one gzip *member* (a gzip file may hold several, read as one stream), written under an exclusive
``flock`` (the leader's gc and a ``haorch gc`` may append at once) and fsynced, with the directory when the file is
new, before the caller deletes anything. A crash mid-append leaves a cut member at the end of the file: the next
writer finds the end of the last complete member and truncates the file there before appending (the experiments
of the cut member were not deleted, so they are archived again). A crash after the append and before the deletes
archives the same experiments again at the next step: readers keep the last record of an experiment, except that a
record without the graph (written after Neo4j's delete, before MariaDB's) does not replace one with it.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from node.errors import UsageError

SUFFIX = ".jsonl.gz"
READ_CHUNK = 1 << 16


def day_file(directory: Path, now: float) -> Path:
    """The file of ``now``'s UTC day."""
    return directory / (time.strftime("%Y-%m-%d", time.gmtime(now)) + SUFFIX)


class Archive:
    """Appends to the day files of ``directory`` (created if missing); remembers where each file's last complete
    member ends, so that only what another writer appended since is checked."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._good_end: dict[Path, int] = {}

    def append(self, records: Iterable[dict[str, Any]], now: float) -> Path:
        """Append ``records`` as one gzip member of ``now``'s day file, durable when this returns."""
        body = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"archive_dir {self.directory}: {exc.strerror}") from None
        path = day_file(self.directory, now)
        new = not path.exists()
        with open(path, "ab+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                end = complete_end(f, self._good_end.get(path, 0))
                f.truncate(end)  # a member cut by a crash: its experiments were not deleted
                f.seek(end)
                f.write(gzip.compress(body, compresslevel=6))
                f.flush()
                os.fsync(f.fileno())
                self._good_end[path] = f.tell()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        if new:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return path


def complete_end(f: IO[bytes], start: int) -> int:
    """The offset after the last complete gzip member of ``f`` at or after ``start`` (a member boundary)."""
    f.seek(start)
    good = position = start
    inflater = zlib.decompressobj(wbits=31)
    while True:
        chunk = f.read(READ_CHUNK)
        if not chunk:
            return good
        while chunk:
            try:
                inflater.decompress(chunk)
            except zlib.error:
                return good
            if not inflater.eof:
                position += len(chunk)
                break
            rest = inflater.unused_data
            position += len(chunk) - len(rest)
            good = position
            inflater = zlib.decompressobj(wbits=31)
            chunk = rest


def archive_files(directory: Path) -> list[Path]:
    """The day files of ``directory``, oldest first (none if it does not exist)."""
    return sorted(directory.glob("*" + SUFFIX)) if directory.is_dir() else []


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one day file, up to its last complete member."""
    with open(path, "rb") as f:
        end = complete_end(f, 0)
        f.seek(0)
        data = f.read(end)
    # streamed member by member: gzip.decompress() copies the rest of the data for each member, which made a day
    # file of ~10,000 members (a day of retention at ~100 experiments a step) take many minutes to read
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as members:
        for line in members:
            if line.strip():
                yield json.loads(line)


def read_archive(directory: Path) -> dict[str, dict[str, Any]]:
    """experiment_id -> its archived record: the last one written, except that a record without the graph does
    not replace one with it (see the module docstring)."""
    found: dict[str, dict[str, Any]] = {}
    for path in archive_files(directory):
        for record in read_lines(path):
            earlier = found.get(record["experiment_id"])
            if earlier is not None and record.get("graph") is None:
                record = {**record, "graph": earlier.get("graph")}
            found[record["experiment_id"]] = record
    return found
