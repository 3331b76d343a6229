"""
chunkd.complete: safe names, and the completed-files area -- moved by
link and unlink, never overwriting, each file with its JSON sidecar.
"""

from __future__ import annotations

import json
import os
import unicodedata
from typing import Any, Dict

from twisted.trial import unittest

from chunkd.complete import MAX_NAME, CompletedFiles, sanitizeFilename

FALLBACK = "upload-0123"


def clean(name: Any) -> str:
    return sanitizeFilename(name, FALLBACK)


class SanitizeFilenameTests(unittest.TestCase):
    def test_ordinaryNamesAreKept(self) -> None:
        for name in ["clip.mp4", "report 2024 (final).pdf", "a-b_c+d,e=f@g.tar.gz", "x"]:
            self.assertEqual(clean(name), name)

    def test_pathComponentsAreDropped(self) -> None:
        for name, expected in [
            ("dir/sub/file.txt", "file.txt"),
            ("/etc/passwd", "passwd"),
            ("../../etc/passwd", "passwd"),
            ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
            ("..\\..\\boot.ini", "boot.ini"),
            ("a/b\\c/d.txt", "d.txt"),
        ]:
            self.assertEqual(clean(name), expected, name)

    def test_emptyOrNothingLeftIsTheFallback(self) -> None:
        for name in [None, "", ".", "..", "...", "/", "dir/", "a/..", "a\\.", " ", " . ", "\x00\x01",
                     "\u200b", "....//"]:
            self.assertEqual(clean(name), FALLBACK, repr(name))

    def test_controlCharactersAreRemoved(self) -> None:
        self.assertEqual(clean("a\x00b\nc\rd\te\x7f\x1bf.txt"), "abcdef.txt")
        self.assertEqual(clean("ab\u202ec.txt"), "abc.txt")  # right-to-left override
        self.assertEqual(clean("a\u200bb"), "ab")  # zero-width space

    def test_leadingDotsAndSpacesAreRemoved(self) -> None:
        self.assertEqual(clean(".bashrc"), "bashrc")
        self.assertEqual(clean("...hidden.txt"), "hidden.txt")
        self.assertEqual(clean(" . .x"), "x")
        self.assertEqual(clean("name.txt. "), "name.txt")

    def test_unsafeCharactersAreReplaced(self) -> None:
        self.assertEqual(clean('a:b*c?d"e<f>g|h.txt'), "a_b_c_d_e_f_g_h.txt")
        self.assertEqual(clean("$(rm -rf ~);`x`.sh"), "_(rm -rf _)__x_.sh")
        self.assertEqual(clean("100%.txt"), "100_.txt")

    def test_unicodeIsKeptInNFC(self) -> None:
        decomposed = "Cafe\u0301 \u00fcber.txt".replace("\u00fc", "u\u0308")
        result = clean(decomposed)
        self.assertEqual(result, "Caf\u00e9 \u00fcber.txt")
        self.assertTrue(unicodedata.is_normalized("NFC", result))
        self.assertEqual(clean("日本語のファイル.pdf"), "日本語のファイル.pdf")

    def test_resultIsAlwaysSafe(self) -> None:
        for name in ["../x", "a/../../b", "\\\\server\\share\\f", "..\x00/..", "\u2215etc\u2215passwd",
                     "x" * 1000, ".." + "/" * 50, "\u0000.txt", ". " * 300]:
            result = clean(name)
            self.assertNotIn("/", result)
            self.assertNotIn("\\", result)
            self.assertNotIn("\x00", result)
            self.assertFalse(result.startswith("."), result)
            self.assertNotIn(result, ("", ".", ".."))
            self.assertLessEqual(len(result.encode("utf-8")), MAX_NAME)

    def test_longNameKeepsItsShortExtension(self) -> None:
        result = clean("a" * 500 + ".mp4")
        self.assertEqual(result, "a" * (MAX_NAME - 4) + ".mp4")
        self.assertEqual(len(result.encode("utf-8")), MAX_NAME)

    def test_extensionOfSixteenIsKept(self) -> None:
        ext = "e" * 16
        result = clean("a" * 300 + "." + ext)
        self.assertTrue(result.endswith("." + ext), result)
        self.assertEqual(len(result), MAX_NAME)

    def test_longExtensionIsCut(self) -> None:
        result = clean("a" * 100 + "." + "e" * 300)
        self.assertEqual(result, "a" * 100 + "." + "e" * (MAX_NAME - 101))

    def test_longNameWithoutExtensionIsCut(self) -> None:
        self.assertEqual(clean("b" * 250), "b" * MAX_NAME)

    def test_exactlyMaxNameIsKept(self) -> None:
        name = "c" * (MAX_NAME - 4) + ".txt"
        self.assertEqual(clean(name), name)

    def test_lengthCountsUTF8Bytes(self) -> None:
        result = clean("é" * 150 + ".txt")  # 304 bytes
        self.assertTrue(result.endswith(".txt"))
        self.assertLessEqual(len(result.encode("utf-8")), MAX_NAME)
        self.assertEqual(result, "é" * ((MAX_NAME - 4) // 2) + ".txt")
        wide = clean("日" * 100)  # 300 bytes, 3 each, no extension
        self.assertEqual(wide, "日" * (MAX_NAME // 3))


class CompletedFilesTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.directory = os.path.join(self.base, "complete", "nested")
        self.area = CompletedFiles(self.directory)
        self.count = 0

    def source(self, content: bytes = b"data") -> str:
        self.count += 1
        path = os.path.join(self.base, f"upload-{self.count}.data")
        with open(path, "wb") as f:
            f.write(content)
        return path

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def sidecar(self, path: str) -> Dict[str, Any]:
        with open(path + ".json", encoding="utf-8") as f:
            info = json.load(f)
        assert isinstance(info, dict)
        return info

    def publish(self, name: str, content: bytes = b"data", **info: Any) -> str:
        return self.area.publish(self.source(content), name, dict(info), durable=False)


class PublishTests(CompletedFilesTestCase):
    def test_directoryIsMadeAndAbsolute(self) -> None:
        self.assertTrue(os.path.isdir(self.directory))
        self.assertEqual(self.area.directory, self.directory)
        relative = os.path.relpath(os.path.join(self.base, "rel"))
        self.assertEqual(CompletedFiles(relative).directory, os.path.join(self.base, "rel"))
        CompletedFiles(self.directory)  # an existing directory is fine

    def test_movedWithItsSidecar(self) -> None:
        source = self.source(b"the bytes")
        inode = os.stat(source).st_ino
        target = self.area.publish(source, "clip.mp4", {"id": "abc", "size": 9, "created": 1.5})
        self.assertEqual(target, os.path.join(self.directory, "clip.mp4"))
        self.assertFalse(os.path.exists(source))
        self.assertEqual(self.read(target), b"the bytes")
        self.assertEqual(os.stat(target).st_ino, inode)  # moved, not copied
        self.assertEqual(os.stat(target).st_nlink, 1)
        self.assertEqual(self.sidecar(target), {"id": "abc", "size": 9, "created": 1.5,
                                                "path": target, "name": "clip.mp4"})
        self.assertEqual(sorted(os.listdir(self.directory)), ["clip.mp4", "clip.mp4.json"])

    def test_infoIsNotChanged(self) -> None:
        info = {"id": "abc"}
        self.area.publish(self.source(), "f.txt", info, durable=False)
        self.assertEqual(info, {"id": "abc"})

    def test_sidecarPathAndNameWin(self) -> None:
        target = self.area.publish(self.source(), "f.txt", {"path": "/elsewhere", "name": "spoofed"},
                                   durable=False)
        self.assertEqual((self.sidecar(target)["path"], self.sidecar(target)["name"]), (target, "f.txt"))

    def test_durablePublication(self) -> None:
        target = self.area.publish(self.source(b"x"), "d.bin", {"id": "1"}, durable=True)
        self.assertEqual(self.read(target), b"x")
        self.assertEqual(self.sidecar(target)["id"], "1")
        self.assertFalse(os.path.exists(target + ".json.tmp"))

    def test_collisionsGetNumberedNames(self) -> None:
        first = self.publish("a.txt", b"1", id="1")
        second = self.publish("a.txt", b"2", id="2")
        third = self.publish("a.txt", b"3", id="3")
        self.assertEqual([os.path.basename(p) for p in (first, second, third)],
                         ["a.txt", "a (1).txt", "a (2).txt"])
        self.assertEqual([self.read(p) for p in (first, second, third)], [b"1", b"2", b"3"])
        self.assertEqual([self.sidecar(p)["id"] for p in (first, second, third)], ["1", "2", "3"])
        self.assertEqual(self.sidecar(second)["name"], "a (1).txt")

    def test_numberedNamesKeepOnlyTheLastExtension(self) -> None:
        self.publish("archive.tar.gz")
        self.assertEqual(os.path.basename(self.publish("archive.tar.gz")), "archive.tar (1).gz")

    def test_numberedNameWithoutExtension(self) -> None:
        self.publish("README")
        self.assertEqual(os.path.basename(self.publish("README")), "README (1)")

    def test_existingFileIsNeverOverwritten(self) -> None:
        # A file the application put there, without a sidecar.
        foreign = os.path.join(self.directory, "report.pdf")
        with open(foreign, "wb") as f:
            f.write(b"theirs")
        target = self.publish("report.pdf", b"ours")
        self.assertEqual(os.path.basename(target), "report (1).pdf")
        self.assertEqual(self.read(foreign), b"theirs")
        self.assertFalse(os.path.exists(foreign + ".json"))

    def test_nameWhoseSidecarSlotIsTakenIsSkipped(self) -> None:
        # "x" is free, but "x.json" is another file's (here: a published
        # file named x.json would have its sidecar at x.json.json).
        with open(os.path.join(self.directory, "x.json"), "wb") as f:
            f.write(b"someone else's")
        target = self.publish("x")
        self.assertEqual(os.path.basename(target), "x (1)")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "x")))
        with open(os.path.join(self.directory, "x.json"), "rb") as f:
            self.assertEqual(f.read(), b"someone else's")

    def test_danglingSidecarSymlinkAlsoTakesTheSlot(self) -> None:
        os.symlink(os.path.join(self.base, "nowhere"), os.path.join(self.directory, "y.txt.json"))
        self.assertEqual(os.path.basename(self.publish("y.txt")), "y (1).txt")
        self.assertFalse(os.path.exists(os.path.join(self.base, "nowhere")))

    def test_interruptedPublicationIsTakenUp(self) -> None:
        # Cut short after link() and before unlink(): our own hard link is
        # the target, not a collision.
        source = self.source(b"half-published")
        target = os.path.join(self.directory, "movie.mkv")
        os.link(source, target)
        published = self.area.publish(source, "movie.mkv", {"id": "m"}, durable=False)
        self.assertEqual(published, target)
        self.assertFalse(os.path.exists(source))
        self.assertEqual(os.stat(target).st_nlink, 1)
        self.assertEqual(self.sidecar(target)["name"], "movie.mkv")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "movie (1).mkv")))

    def test_interruptedNumberedPublicationIsTakenUp(self) -> None:
        self.publish("n.txt", b"first")
        source = self.source(b"second")
        os.link(source, os.path.join(self.directory, "n (1).txt"))
        published = self.area.publish(source, "n.txt", {"id": "2"}, durable=False)
        self.assertEqual(os.path.basename(published), "n (1).txt")
        self.assertEqual(self.read(published), b"second")
        self.assertEqual(sorted(os.listdir(self.directory)),
                         ["n (1).txt", "n (1).txt.json", "n.txt", "n.txt.json"])

    def test_sameContentIsNotOurs(self) -> None:
        # Another file with the very same bytes is not our link.
        with open(os.path.join(self.directory, "same.txt"), "wb") as f:
            f.write(b"data")
        self.assertEqual(os.path.basename(self.publish("same.txt", b"data")), "same (1).txt")

    def test_noFreeNameLeavesTheSource(self) -> None:
        # Every name's sidecar slot taken (cheaply, by empty files): the
        # source stays where it was and nothing is written.
        slots = ["full.txt.json"] + [f"full ({n}).txt.json" for n in range(1, 10000)]
        for slot in slots:
            open(os.path.join(self.directory, slot), "wb").close()
        source = self.source(b"left")
        with self.assertRaises(OSError) as caught:
            self.area.publish(source, "full.txt", {}, durable=False)
        self.assertIn("no free name", str(caught.exception))
        self.assertEqual(self.read(source), b"left")
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(slots))

    def test_aPublishedFileNamedLikeATemporarySidecarIsKept(self) -> None:
        first = self.publish("clip.json.tmp", b"first")
        second = self.publish("clip", b"second")
        self.assertEqual((self.read(first), self.read(second)), (b"first", b"second"))
        self.assertEqual(self.sidecar(first)["path"], first)
        self.assertEqual(self.sidecar(second)["path"], second)
        self.assertEqual(sorted(n for n in os.listdir(self.directory) if n.startswith(".")), [])


class FindPublishedTests(CompletedFilesTestCase):
    def test_findsByIdAndCreated(self) -> None:
        target = self.publish("clip.mp4", id="u1", created=100.0, size=4)
        found = self.area.findPublished("clip.mp4", "u1", 100.0)
        self.assertEqual(found, (target, {"id": "u1", "created": 100.0, "size": 4,
                                          "path": target, "name": "clip.mp4"}))

    def test_findsANumberedVariant(self) -> None:
        self.publish("clip.mp4", id="u1", created=100.0)
        self.publish("clip.mp4", id="u2", created=100.0)
        second = self.publish("clip.mp4", id="u3", created=200.0)
        found = self.area.findPublished("clip.mp4", "u3", 200.0)
        assert found is not None
        self.assertEqual(found[0], second)
        self.assertEqual(os.path.basename(second), "clip (2).mp4")

    def test_otherIdsAreIgnored(self) -> None:
        self.publish("clip.mp4", id="u1", created=100.0)
        self.assertIsNone(self.area.findPublished("clip.mp4", "u2", 100.0))

    def test_otherCreatedValuesAreIgnored(self) -> None:
        # The same id from an earlier upload (a chunked upload's id derives
        # from the client's identifier).
        self.publish("clip.mp4", id="u1", created=100.0)
        self.assertIsNone(self.area.findPublished("clip.mp4", "u1", 100.5))
        later = self.publish("clip.mp4", id="u1", created=200.0)
        self.assertEqual(self.area.findPublished("clip.mp4", "u1", 200.0)[0], later)  # type: ignore[index]

    def test_otherNamesAreIgnored(self) -> None:
        self.publish("other.mp4", id="u1", created=100.0)
        self.assertIsNone(self.area.findPublished("clip.mp4", "u1", 100.0))

    def test_unreadableSidecarsAreIgnored(self) -> None:
        for entry, content in [("clip.mp4.json", b"{not json"), ("clip (1).mp4.json", b"\xff\xfe"),
                               ("clip (2).mp4.json", b'["a", "list"]'), ("clip (3).mp4.json", b"")]:
            with open(os.path.join(self.directory, entry), "wb") as f:
                f.write(content)
            with open(os.path.join(self.directory, entry[: -len(".json")]), "wb") as f:
                f.write(b"x")
        os.mkdir(os.path.join(self.directory, "clip (4).mp4.json"))  # not even a file
        target = self.publish("clip.mp4", id="u1", created=1.0)
        self.assertEqual(os.path.basename(target), "clip (5).mp4")
        found = self.area.findPublished("clip.mp4", "u1", 1.0)
        assert found is not None
        self.assertEqual(found[0], target)

    def test_sidecarWithoutItsFileIsIgnored(self) -> None:
        target = self.publish("gone.txt", id="u1", created=1.0)
        os.unlink(target)
        self.assertIsNone(self.area.findPublished("gone.txt", "u1", 1.0))

    def test_emptyArea(self) -> None:
        self.assertIsNone(self.area.findPublished("anything.txt", "u1", 1.0))
