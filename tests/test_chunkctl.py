"""
C{chunkctl} as a sysadmin runs it: a real process (C{python -m
chunkd.chunkctl}, what the console script calls) against a storage
directory a real store wrote and then damaged, and against a live chunkd
process while an upload streams into it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import struct
import sys
import termios
import time
from typing import Any, List

from twisted.internet import defer
from twisted.trial import unittest

from chunkd.inventory import PROBLEMS
from chunkd.store import ACTIVE, COMPLETE, EXPIRED
from tests.helpers import ROOT, Daemon, patchHead, readResponse, tusCreate
from tests.test_inventory import InventoryTestCase


def chunkctl(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    """Run chunkctl; its output captured as text unless C{kw} says where it goes."""
    options: Any = {"capture_output": True, "text": True} if not kw else kw
    return subprocess.run([sys.executable, "-m", "chunkd.chunkctl", *args],
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=60, **options)


class DamagedStoreTests(InventoryTestCase):
    @defer.inlineCallbacks
    def test_fsckFindsEveryDamagePrintsTheRepairThenRepairs(self) -> Any:
        damage, healthy, young = yield self.damagedStore()
        found = chunkctl("--storage", self.directory, "fsck", "--json")
        self.assertEqual(found.returncode, 1, found.stderr)
        problems = json.loads(found.stdout)["problems"]
        self.assertEqual(sorted({p["kind"] for p in problems}), sorted(PROBLEMS))
        for kind in PROBLEMS:
            if kind != "stale-temp":
                self.assertIn((kind, damage[kind]), [(p["kind"], p["uploadId"]) for p in problems])

        human = chunkctl("--storage", self.directory, "fsck")
        self.assertEqual(human.returncode, 1)
        lines = human.stdout.splitlines()
        self.assertEqual(lines[0], f"{len(problems)} problems found:")
        self.assertEqual(lines[1].split(), ["PROBLEM", "PATH", "DETAIL", "REPAIR", "WOULD"])
        # Aligned: every row's path starts in the header's PATH column.
        column = lines[1].index("PATH")
        for line in lines[2:2 + len(problems)]:
            self.assertEqual(line[column - 2:column], "  ")
            self.assertNotEqual(line[column], " ")
        self.assertIn("chunkctl fsck --repair", human.stdout)

        repaired = chunkctl("--storage", self.directory, "fsck", "--repair")
        self.assertEqual(repaired.returncode, 1)  # problems were found (and mended)
        out = repaired.stdout
        # What each repair will do is printed before it is done.
        self.assertLess(out.index("REPAIR WILL"), out.index("repairing:"))
        self.assertIn("mark the upload expired", out[:out.index("repairing:")])
        after = out[out.index("repairing:"):].splitlines()[1:]
        self.assertEqual(len(after), len(problems))
        self.assertFalse([line for line in after if "left alone" in line or "nothing to do" in line])
        self.assertEqual(self.store.get(damage["record-without-data"]).state, EXPIRED)
        self.assertEqual(self.store.get(damage["offset-beyond-data"]).offset, 4)

        clean = chunkctl("--storage", self.directory, "fsck")
        self.assertEqual((clean.returncode, clean.stdout), (0, "no problems found\n"))
        self.assertTrue(os.path.exists(self.store.dataPath(young)))
        self.assertEqual(self.store.get(healthy[0]).state, ACTIVE)

    @defer.inlineCallbacks
    def test_listJsonShowStatsExpireDelete(self) -> Any:
        fresh = yield self.active(b"fresh bytes", 100, metadata={"filename": "cat.jpg"})
        done = yield self.published(b"finished")
        listed = chunkctl("--storage", self.directory, "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        entries = {e["id"]: e for e in json.loads(listed.stdout)}
        self.assertEqual(entries[fresh.id]["state"], ACTIVE)
        self.assertEqual((entries[fresh.id]["size"], entries[fresh.id]["offset"]), (100, 11))
        self.assertEqual(entries[done.id]["state"], COMPLETE)
        self.assertEqual(entries[done.id]["sha256"], done.published.sha256)
        only = json.loads(chunkctl("--storage", self.directory, "list", "--state", "complete",
                                   "--json").stdout)
        self.assertEqual([e["id"] for e in only], [done.id])
        only = json.loads(chunkctl("--storage", self.directory, "list", "--protocol", "facade",
                                   "--older-than", "1d", "--json").stdout)
        self.assertEqual(only, [])

        table = chunkctl("--storage", self.directory, "list").stdout.splitlines()
        self.assertEqual(table[0].split()[:4], ["ID", "STATE", "PROTOCOL", "SIZE"])
        self.assertEqual(len({line.index(" ago") for line in table[1:]}), 1)  # aligned

        shown = chunkctl("--storage", self.directory, "show", fresh.id)
        self.assertEqual(shown.returncode, 0)
        self.assertIn("metadata.filename  cat.jpg", shown.stdout)
        stats = json.loads(chunkctl("--storage", self.directory, "stats", "--json").stdout)
        self.assertEqual((stats["uploads"], stats["states"]["active"]), (2, 1))

        expired = chunkctl("--storage", self.directory, "expire", fresh.id)
        self.assertEqual((expired.returncode, expired.stdout), (0, f"{fresh.id}: expired\n"))
        again = chunkctl("--storage", self.directory, "delete", fresh.id)
        self.assertEqual(again.returncode, 1)
        self.assertIn("expired already", again.stderr)
        refused = chunkctl("--storage", self.directory, "expire", done.id)
        self.assertEqual(refused.returncode, 1)
        deleted = chunkctl("--storage", self.directory, "delete", done.id)
        self.assertEqual(deleted.returncode, 0)
        self.assertEqual(self.store.get(done.id).state, "terminated")

    def test_usageAndConfigurationErrorsExitTwoWithOneLine(self) -> None:
        for args, message in (
                ((), "the following arguments are required"),
                (("list",), "give --config FILE or --storage DIR"),
                (("--storage", self.directory + "/nope", "list"), "is not a chunkd storage directory"),
                (("--storage", self.directory, "list", "--older-than", "2x"), "--older-than"),
                (("--storage", self.directory, "show", "../etc/passwd"), "not an upload id"),
                (("--config", self.directory + "/missing.yaml", "list"), "cannot read config file")):
            result = chunkctl(*args)
            self.assertEqual(result.returncode, 2, args)
            self.assertIn(message, result.stderr)
            self.assertNotIn("Traceback", result.stderr)
        bad = os.path.join(self.directory, "bad.yaml")
        with open(bad, "w") as f:
            f.write("storage:\n  directoy: x\n")
        result = chunkctl("--config", bad, "list")
        self.assertEqual((result.returncode, result.stderr.strip()),
                         (2, "chunkctl: configuration error: storage.directoy: unknown key"))

    @defer.inlineCallbacks
    def test_aProgressBarOnlyOnATerminal(self) -> Any:
        for _ in range(3):
            yield self.active(b"abc", 10)
        master, slave = pty.openpty()
        # A terminal has a size (a fresh pty's is 0x0, where a bar has no room).
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        result = chunkctl("--storage", self.directory, "stats", stderr=slave, stdout=subprocess.PIPE)
        # The slave stays open here, so what chunkctl wrote stays readable.
        shown = b""
        while select.select([master], [], [], 0.5)[0]:
            shown += os.read(master, 65536)
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"reading", shown)
        self.assertIn(b"0/3", shown)  # the bar, before the first step
        piped = chunkctl("--storage", self.directory, "stats")
        self.assertEqual(piped.stderr, "")


class LiveDaemonTests(unittest.TestCase):
    def test_aStreamingUploadIsSeenWritingAndNotTouched(self) -> None:
        """
        chunkctl beside a running chunkd: while a tus PATCH streams, the
        upload is listed active and being written, fsck finds nothing,
        expire and delete refuse it; the upload then finishes byte-exact.
        """
        daemon = Daemon({})
        self.addCleanup(daemon.stop)
        storage = daemon.config["storage"]["directory"]
        data = os.urandom(4 * 1024 * 1024)
        uploadId = tusCreate(daemon, len(data))
        s = daemon.connect()
        self.addCleanup(s.close)
        s.sendall(patchHead(uploadId, 0, len(data)))
        s.sendall(data[:1024 * 1024])

        def listed() -> List[Any]:
            result = chunkctl("--storage", storage, "list", "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
            return json.loads(result.stdout)

        deadline = time.time() + 20
        while not listed()[0]["writing"]:
            self.assertLess(time.time(), deadline, "chunkd never held the upload")
            time.sleep(0.1)
        entry = listed()[0]
        self.assertEqual((entry["id"], entry["state"], entry["protocol"], entry["size"]),
                         (uploadId, ACTIVE, "tus", len(data)))
        table = chunkctl("--storage", storage, "list").stdout
        self.assertIn("active (writing)", table)

        fsck = chunkctl("--storage", storage, "fsck", "--repair")
        self.assertEqual((fsck.returncode, fsck.stdout), (0, "no problems found\n"))
        for action in ("expire", "delete"):
            refused = chunkctl("--storage", storage, action, uploadId)
            self.assertEqual(refused.returncode, 1)
            self.assertIn("being written; it was left alone", refused.stderr)

        s.sendall(data[1024 * 1024:])
        answer = readResponse(s)
        self.assertTrue(answer.startswith(b"HTTP/1.1 204"), answer)
        head = daemon.request(f"HEAD /files/{uploadId} HTTP/1.1\r\nHost: h\r\n"
                              "Tus-Resumable: 1.0.0\r\n\r\n".encode())
        self.assertIn(f"Upload-Offset: {len(data)}".encode(), head)
        with open(os.path.join(storage, "uploads", uploadId + ".data"), "rb") as f:
            self.assertEqual(f.read(), data)
        entry = listed()[0]
        self.assertEqual((entry["state"], entry["offset"], entry["writing"]), (COMPLETE, len(data), False))
