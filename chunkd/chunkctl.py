"""
C{chunkctl}: inspect and repair a chunkd storage directory from the shell.

It works on the storage directory directly, through L{chunkd.inventory}
(the same module the admin view uses), taking the daemon's own per-upload
locks, so it is safe while any number of chunkd processes serve the
directory, and while none does.

Exit status: 0 all well, 1 problems found (or an action that could not be
done: the upload is busy, gone, unknown), 2 a usage or configuration
error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO

from chunkd.config import Config, ConfigError, loadConfig, parseDuration
from chunkd.errors import UploadError
from chunkd.inventory import (
    STATES,
    Inventory,
    Problem,
    UploadSummary,
    age,
    offlineStore,
)
from chunkd.store import EXPIRED, TERMINATED, isUploadId

OK, PROBLEMS, USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake on the command line or in the config: one line, exit 2."""


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Columns aligned on the widest cell; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def size(n: Optional[int]) -> str:
    """Bytes for a human: C{512 B}, C{16.0 MiB}; C{?} when unknown."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progressFor(label: str, stream: TextIO) -> Callable[[List[str]], Iterable[str]]:
    """
    A progress bar on C{stream} while walking many entries -- only when it
    is a terminal, so scripts and pipes get clean output.
    """

    def progress(names: List[str]) -> Iterable[str]:
        if not stream.isatty():
            return names
        from tqdm import tqdm

        return tqdm(names, desc=label, unit=" files", file=stream, leave=False)

    return progress


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chunkctl", description="Inspect and repair a chunkd storage directory "
        "(safe while chunkd runs: it takes the daemon's own locks).",
        epilog="Exit status: 0 all well, 1 problems found, 2 usage or configuration error.")
    p.add_argument("--config", "-c", help="chunkd's YAML configuration file")
    p.add_argument("--storage", "-s", help="the storage directory (overrides the config's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="list uploads")
    listing.add_argument("--state", choices=STATES, action="append",
                         help="only uploads in this state (repeatable)")
    listing.add_argument("--protocol", help="only uploads of this protocol (tus, resumable, ...)")
    listing.add_argument("--older-than", metavar="DURATION",
                         help="only uploads created longer ago than this (90s, 15m, 2d)")
    listing.add_argument("--json", action="store_true", dest="subjson", help="machine-readable output")
    for name, doc in (("show", "everything about one upload"),
                      ("expire", "expire one unfinished upload now (as the janitor would)"),
                      ("delete", "delete one upload now (as a tus DELETE would)")):
        sub = commands.add_parser(name, help=doc)
        sub.add_argument("id", help="the upload id (32 hex digits)")
        sub.add_argument("--json", action="store_true", dest="subjson", help="machine-readable output")
    stats = commands.add_parser("stats", help="counts and bytes over the whole store")
    stats.add_argument("--json", action="store_true", dest="subjson", help="machine-readable output")
    fsck = commands.add_parser("fsck", help="check records against data files")
    fsck.add_argument("--repair", action="store_true",
                      help="mend what was found (printed first, then done)")
    fsck.add_argument("--no-hashes", action="store_true",
                      help="do not read published files to check their sha256")
    fsck.add_argument("--json", action="store_true", dest="subjson", help="machine-readable output")
    return p


def loadFor(args: argparse.Namespace) -> Config:
    """
    The config C{chunkctl} acts on, refusing a storage directory that is
    not one (it never creates one).
    """
    if args.config is None and args.storage is None:
        raise UsageError("give --config FILE or --storage DIR")
    overrides: Dict[str, object] = {}
    if args.storage is not None:
        overrides["storage.directory"] = args.storage
    try:
        config = loadConfig(args.config, overrides)
    except ConfigError as e:
        raise UsageError(f"configuration error: {e}") from None
    uploads = os.path.join(config.storage.directory, "uploads")
    if not os.path.isdir(uploads):
        raise UsageError(f"configuration error: storage.directory: {config.storage.directory} "
                         "is not a chunkd storage directory (it has no uploads/)")
    return config


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    args = parser().parse_args(argv)
    args.json = args.json or getattr(args, "subjson", False)
    try:
        config = loadFor(args)
        if getattr(args, "id", None) is not None and not isUploadId(args.id):
            raise UsageError(f"{args.id!r} is not an upload id (32 hex digits)")
        olderThan = None
        if getattr(args, "older_than", None) is not None:
            try:
                olderThan = parseDuration(args.older_than)
            except ValueError as e:
                raise UsageError(f"--older-than: {e}") from None
    except UsageError as e:
        err.write(f"chunkctl: {e}\n")
        return USAGE
    inventory = Inventory(offlineStore(config), config)
    command: Callable[..., int] = globals()["_" + args.command]
    if args.command == "list":
        return command(inventory, args, olderThan, out, err)
    return command(inventory, args, out, err)


def _list(inventory: Inventory, args: argparse.Namespace, olderThan: Optional[float],
          out: TextIO, err: TextIO) -> int:
    found = inventory.uploads(args.state, args.protocol, olderThan, progressFor("reading", err))
    if args.json:
        json.dump([s.asDict() for s in found], out, indent=1)
        out.write("\n")
        return OK
    if not found:
        out.write("no uploads\n")
        return OK
    now = inventory.clock()
    rows = [["ID", "STATE", "PROTOCOL", "SIZE", "RECEIVED", "CREATED", "UPDATED", "SUBJECT", "FILE"]]
    rows.extend(_row(s, now) for s in found)
    table(rows, out)
    return OK


def _row(s: UploadSummary, now: float) -> List[str]:
    state = s.state + (" (writing)" if s.writing else "")
    if s.size:
        received = f"{size(s.offset)} {100 * s.offset // s.size}%"
    else:
        received = size(s.offset)
    return [s.id, state, s.protocol, size(s.size), received, age(now - s.created) + " ago",
            age(now - s.updated) + " ago", s.subject or "-", s.published or s.filename or "-"]


def _show(inventory: Inventory, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        shown = inventory.show(args.id)
    except UploadError as e:
        err.write(f"chunkctl: {args.id}: {e.reason}\n")
        return PROBLEMS
    if args.json:
        json.dump(shown, out, indent=1, sort_keys=True)
        out.write("\n")
        return OK
    now = inventory.clock()
    rows = [["FIELD", "VALUE"]]
    for key in ("id", "state", "protocol", "size", "offset", "dataFileSize", "subject", "filename",
                "published", "sha256"):
        value = shown[key]
        rows.append([key, "-" if value is None else str(value)])
    rows.append(["writing", "yes (a writer holds its lock)" if shown["writing"] else "no"])
    for key in ("created", "updated", "expires"):
        when = shown[key]
        rows.append([key, "-" if when is None else
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} "
                     f"({age(abs(now - when))} {'ago' if when <= now else 'from now'})"])
    for name, value in sorted(shown["metadata"].items()):
        rows.append([f"metadata.{name}", "-" if value is None else value])
    table(rows, out)
    return OK


def _expire(inventory: Inventory, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _end(inventory, args, EXPIRED, out, err)


def _delete(inventory: Inventory, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _end(inventory, args, TERMINATED, out, err)


def _end(inventory: Inventory, args: argparse.Namespace, state: str, out: TextIO, err: TextIO) -> int:
    try:
        record = inventory.end(args.id, state)
    except UploadError as e:
        err.write(f"chunkctl: {args.id}: {e.reason}\n")
        return PROBLEMS
    if args.json:
        json.dump({"id": record.id, "state": record.state}, out)
        out.write("\n")
    else:
        out.write(f"{record.id}: {record.state}\n")
    return OK


def _stats(inventory: Inventory, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stats = inventory.stats(progressFor("reading", err))
    if args.json:
        json.dump(stats.asDict(), out, indent=1, sort_keys=True)
        out.write("\n")
        return OK
    now = inventory.clock()
    rows = [["WHAT", "VALUE"], ["uploads", str(stats.uploads)]]
    rows.extend([f"  {state}", str(n)] for state, n in stats.states.items())
    rows.extend([f"  {protocol}", str(n)] for protocol, n in sorted(stats.protocols.items()))
    rows.append(["being written", str(stats.writing)])
    rows.append(["received, unfinished", size(stats.receivedBytes)])
    rows.append(["data files on disk", size(stats.dataBytes)])
    rows.append(["published", size(stats.publishedBytes)])
    rows.append(["oldest unfinished", "-" if stats.oldestActive is None
                 else age(now - stats.oldestActive) + " old"])
    rows.append(["hook deliveries pending", str(stats.hooksPending)])
    rows.append(["disk free", f"{size(stats.diskFree)} of {size(stats.diskTotal)}"])
    table(rows, out)
    return OK


def _fsck(inventory: Inventory, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    problems = inventory.check(progressFor("checking", err), hashes=not args.no_hashes)
    repairs: List[Dict[str, Any]] = []
    if not args.json:
        _problemTable(problems, args.repair, out)
    if args.repair and problems:
        if not args.json:
            out.write("repairing:\n")
        for problem in problems:
            done = inventory.repair(problem)
            repairs.append(dict(problem.asDict(), done=done))
            if not args.json:
                out.write(f"  {problem.kind} {problem.path}: {done}\n")
    if args.json:
        json.dump({"problems": [p.asDict() for p in problems], "repairs": repairs}, out, indent=1)
        out.write("\n")
    return PROBLEMS if problems else OK


def _problemTable(problems: List[Problem], repairing: bool, out: TextIO) -> None:
    if not problems:
        out.write("no problems found\n")
        return
    out.write(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found:\n")
    rows = [["PROBLEM", "PATH", "DETAIL", "REPAIR WILL" if repairing else "REPAIR WOULD"]]
    rows.extend([p.kind, p.path, p.detail, p.repair] for p in problems)
    table(rows, out)
    if not repairing:
        out.write("run `chunkctl fsck --repair` to mend them\n")


def run() -> None:
    """The console script."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
