"""
The completed-files area: where a finished upload is handed to the
application that wanted it.

A finished upload's data file is I{moved} here (a rename on the same file
system: no copy, no reassembly) under a name that is safe by construction,
with a JSON sidecar (C{<name>.json}) holding what the application needs.
One schema for every protocol: C{id}, C{protocol}, C{created},
C{completedAt}, C{size}, C{sha256}, C{path}, C{name}, C{filename} (safe to
use), C{clientFilename} (as sent, for display), C{metadata}, and the
protocol's own fields (Resumable.js: C{identifier}, C{relativePath},
C{clientRelativePath}, C{type}).  Names never come from
client text unsanitized, and an existing file is never overwritten: a
collision gets a numbered name instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import unicodedata
from typing import Any, Dict, Optional, Tuple

_UNSAFE = re.compile(r"[^\w.\- ()+,=@]", re.UNICODE)
MAX_NAME = 200


def sanitizeFilename(name: Optional[str], fallback: str) -> str:
    """
    A file name safe to create in one directory: the last path component
    of C{name}, without control characters, separators or leading dots,
    at most L{MAX_NAME} bytes of UTF-8; C{fallback} when nothing is left.
    """
    if not name:
        return fallback
    name = unicodedata.normalize("NFC", name.replace("\\", "/")).split("/")[-1]
    name = "".join(c for c in name if c.isprintable())
    name = _UNSAFE.sub("_", name).strip(" .")
    while len(name.encode("utf-8")) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            name = stem[:-1] + "." + ext
        else:
            name = name[:-1]
    if not name or name in (".", ".."):
        return fallback
    return name


class CompletedFiles:
    """
    The directory finished uploads are published into.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def publish(self, source: str, name: str, info: Dict[str, Any], durable: bool = True) -> str:
        """
        Move the file at C{source} into the area as C{name} (already
        sanitized), or C{name (1)}, C{name (2)}, ... if taken, and write its
        sidecar.  Blocking: call it in the disk pool.

        The sidecar is written first under a temporary name that says whose
        it is (the upload's id and the file's inode), then the file moves,
        then the sidecar takes its name.  A process killed between the move
        and that rename leaves everything the next request needs to finish
        the job (L{findPublished}).

        @return: the path the file now has.
        """
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        inode = os.stat(source).st_ino
        for n in range(10000):
            candidate = name if n == 0 else f"{stem} ({n}){'.' + ext if ext else ''}"
            target = os.path.join(self.directory, candidate)
            if os.path.lexists(target + ".json"):
                continue  # that name's sidecar slot holds another file
            temp = self._pendingSidecar(candidate, str(info.get("id", "")), inode)
            _writeJSON(temp, dict(info, path=target, name=candidate), durable)
            try:
                # link() fails if the name exists: never overwrites, unlike rename().
                os.link(source, target)
            except FileExistsError:
                if not os.path.samefile(source, target):
                    os.unlink(temp)
                    continue
                # Our own link, from a publication cut short before it
                # removed the source: take it up where it stopped.
            except BaseException:
                os.unlink(temp)
                raise
            os.unlink(source)
            break
        else:
            raise OSError("no free name for the completed file")
        os.replace(temp, target + ".json")
        return target

    def _pendingSidecar(self, candidate: str, uploadId: str, inode: int) -> str:
        # A leading dot: no published name can have one (sanitizeFilename
        # strips them), so the temporary file never lands on a published one.
        return os.path.join(self.directory, f".{candidate}.json.{uploadId}-{inode}.tmp")

    def findPublished(self, name: str, uploadId: str, created: float) -> Optional[Tuple[str, Dict[str, Any]]]:
        """
        The file published for C{uploadId} under C{name} or one of its
        numbered variants, with its sidecar -- for finishing a publication
        whose record was not updated.  C{created} tells this upload from an
        earlier one with the same id (a chunked upload's id derives from
        the client's identifier).  Blocking: call it in the disk pool.

        A publication whose file moved but whose sidecar never took its
        name (its process was killed) is finished here, from the pending
        sidecar, if nobody is publishing it any more: the file still
        carries the upload's lock while its publisher lives.
        """
        stem = name.rpartition(".")[0] or name
        entries = os.listdir(self.directory)
        for entry in entries:
            if not entry.endswith(".json") or not entry.startswith(stem):
                continue
            info = _readJSON(os.path.join(self.directory, entry))
            path = os.path.join(self.directory, entry[: -len(".json")])
            if (isinstance(info, dict) and info.get("id") == uploadId
                    and info.get("created") == created and os.path.exists(path)):
                return path, info
        for entry in entries:
            pending = _PENDING.match(entry)
            if pending is None or pending["id"] != uploadId or not pending["name"].startswith(stem):
                continue
            found = self._finishPending(entry, pending["name"], int(pending["inode"]), uploadId, created)
            if found is not None:
                return found
        return None

    @staticmethod
    def owns(path: str, uploadId: str, created: float) -> bool:
        """
        Whether the published file at C{path} is still this upload's: its
        sidecar names the upload (id and creation time).  Once the
        application takes a file and its sidecar away, a later upload may
        publish under the same name; that file is the other upload's, and
        nothing done for this one (a check of its sha256, its removal when
        kept long enough) may touch it.  Blocking.
        """
        info = _readJSON(path + ".json")
        return (isinstance(info, dict) and info.get("id") == uploadId and info.get("created") == created
                and os.path.exists(path))

    def _finishPending(self, entry: str, candidate: str, inode: int, uploadId: str,
                       created: float) -> Optional[Tuple[str, Dict[str, Any]]]:
        temp = os.path.join(self.directory, entry)
        target = os.path.join(self.directory, candidate)
        info = _readJSON(temp)
        if not (isinstance(info, dict) and info.get("id") == uploadId and info.get("created") == created):
            return None
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            return None  # killed before the move: the upload still has its data
        try:
            if os.fstat(fd).st_ino != inode:
                return None  # another upload's file took the name
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its publisher is alive and finishes it
            os.replace(temp, target + ".json")
            return target, info
        finally:
            os.close(fd)


#: a sidecar written before its file moved: C{.<name>.json.<upload id>-<inode>.tmp}
_PENDING = re.compile(r"^\.(?P<name>.+)\.json\.(?P<id>[0-9a-zA-Z]*)-(?P<inode>[0-9]+)\.tmp\Z")


def _writeJSON(path: str, value: Dict[str, Any], durable: bool) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, sort_keys=True)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def _readJSON(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
