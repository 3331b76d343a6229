"""
Hostile names everywhere a client names something (issue 15): the
Resumable.js/flow.js identifier, file name and relative path, the tus
C{filename} metadata (a download's C{Content-Disposition}), and the
facade's finalize C{filename}.

Each name is drawn by hypothesis from the classic attacks -- C{..},
absolute paths, NUL, control characters, right-to-left marks (U+202E),
10,000 characters, invalid UTF-8 (percent-encoded and raw) -- mixed with
arbitrary text, and always carries L{MARKER}, so a file made from it is
found wherever it went.  Properties, for every name: a clean 4xx or a
sanitized success, never a 5xx, never a byte outside the storage
directory (the completed-files area is inside it here), and the names in
completed files and their sidecars are safe: one path component, no
control or format character, no leading dot, at most 200 bytes.

The daemon is a real process and the client a plain socket, for the
reasons given in L{tests.test_properties}.
"""

from __future__ import annotations

import json
import os
import secrets
import unicodedata
from typing import Any, Dict, List, Tuple
from urllib.parse import quote_from_bytes

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import MARKER, OCTETS, exchange, wireRequest
from tests.test_properties import PropertyCase, examples

ATTACKS = [
    "..", "../..", "../../../../tmp/" + MARKER, "/tmp/" + MARKER, "/" + MARKER, "..\\..\\" + MARKER,
    MARKER + "\x00.txt", "\x00", MARKER + "\x01\x1f\x7f", MARKER + "\u202etxt.exe", "\u202e",
    MARKER + "\r\nX-Injected: 1", "." + MARKER, "~/" + MARKER, "C:\\" + MARKER, MARKER + "/",
    MARKER + "/../../" + MARKER, MARKER * 2 + "a" * 10000, "\ufeff" + MARKER, MARKER + "\u0301" * 50,
    MARKER + " .", "con", "%2e%2e%2f" + MARKER,
]


def hostileNames() -> st.SearchStrategy[bytes]:
    """
    Names as UTF-8 bytes -- or not UTF-8 at all -- each with L{MARKER} in it.
    """
    text = st.one_of(st.sampled_from(ATTACKS), st.text(max_size=40).map(lambda t: MARKER + t),
                     st.lists(st.sampled_from(ATTACKS), min_size=2, max_size=4).map("/".join))
    utf8 = text.map(lambda t: t.encode("utf-8", "surrogatepass"))
    invalid = st.sampled_from([b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]).map(
        lambda junk: MARKER.encode() + junk + b".bin")
    return st.one_of(utf8, utf8, invalid)


def checkSafeName(case: PropertyCase, name: Any) -> None:
    """A name safe to use in one directory."""
    case.assertIsInstance(name, str)
    case.assertNotIn("/", name)
    case.assertNotIn("\\", name)
    case.assertFalse(name.startswith("."), name)
    case.assertNotIn(name, ("", ".", ".."))
    case.assertLessEqual(len(name.encode("utf-8", "surrogatepass")), 200)
    for c in name:
        case.assertNotIn(unicodedata.category(c), ("Cc", "Cf", "Cs", "Zl", "Zp"), repr(name))


def checkSafeRelativePath(case: PropertyCase, path: Any) -> None:
    case.assertIsInstance(path, str)
    case.assertFalse(path.startswith("/"), path)
    for component in path.split("/"):
        checkSafeName(case, component)


class HostileNames(PropertyCase):
    """Hostile names in every protocol; the completed area stays inside the storage."""

    def completedFiles(self) -> List[Tuple[str, Dict[str, Any]]]:
        area = os.path.join(self.watch.storage, "complete")
        if not os.path.isdir(area):
            return []
        found = []
        for entry in os.listdir(area):
            path = os.path.join(area, entry)
            self.assertEqual(os.path.realpath(os.path.dirname(path)), area)
            if entry.endswith(".json"):
                with open(path, encoding="utf-8") as f:
                    found.append((entry, json.load(f)))
        return found

    def checkSidecars(self) -> None:
        for entry, sidecar in self.completedFiles():
            checkSafeName(self, sidecar["name"])
            checkSafeName(self, sidecar["filename"])
            self.assertEqual(os.path.dirname(sidecar["path"]), os.path.join(self.watch.storage, "complete"))
            self.assertTrue(os.path.exists(sidecar["path"]))
            if "relativePath" in sidecar:
                checkSafeRelativePath(self, sidecar["relativePath"])

    @examples(80)
    @given(st.data())
    def test_chunkProtocols(self, data: Any) -> None:
        """A one-chunk file under a hostile identifier, file name and relative path."""
        prefix = data.draw(st.sampled_from(["resumable", "flow"]), label="dialect")
        names = {
            "Identifier": data.draw(st.one_of(st.just(f"5-ok-{secrets.token_hex(4)}".encode()), hostileNames()),
                                    label="identifier"),
            "Filename": data.draw(hostileNames(), label="filename"),
            "RelativePath": data.draw(hostileNames(), label="relativePath"),
        }
        content = b"hello"
        params: List[Tuple[str, bytes]] = [
            (prefix + "ChunkNumber", b"1"), (prefix + "ChunkSize", b"1048576"),
            (prefix + "CurrentChunkSize", b"5"), (prefix + "TotalSize", b"5"), (prefix + "TotalChunks", b"1"),
        ] + [(prefix + k, v) for k, v in names.items()]
        # Raw bytes outside ASCII in the request line are not sent: twisted.web
        # answers them with a bare 400 before chunkd sees the request (a
        # framing matter); percent-encoded, invalid UTF-8 reaches chunkd.
        how = data.draw(st.sampled_from(["query", "multipart"]), label="how")
        if sum(len(v) for _, v in params) > 2000:
            # A request line of 30 KB is cut by twisted.web without an
            # answer (the 414 of issue 15, a framing matter): long names go
            # in the form, where chunkd reads them.
            how = "multipart"
        if how == "multipart":
            boundary = b"----hostile" + secrets.token_hex(4).encode()
            parts = [b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                     % (boundary, k.encode(), v) for k, v in params]
            body = b"".join(parts) + (b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n"
                                      b"Content-Type: application/octet-stream\r\n\r\n%s\r\n--%s--\r\n"
                                      % (boundary, content, boundary))
            payload = wireRequest("POST", f"/{prefix}",
                                  [("Content-Type", "multipart/form-data; boundary=" + boundary.decode())], body)
        else:
            query = b"&".join(k.encode() + b"=" + quote_from_bytes(v, safe="").encode() for k, v in params)
            payload = wireRequest("POST", b"/" + prefix.encode() + b"?" + query,
                                  [("Content-Type", "application/octet-stream")], content)
        before = self.begin(payload)
        answer = self.send(payload, "POST")

        def published(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            self.checkSidecars()

        self.verdict(answer, "POST", (200,), before, accepted=published)

    @examples(60)
    @given(st.data())
    def test_tusFilenameMetadata(self, data: Any) -> None:
        """A hostile tus filename: stored as sent, downloaded under a safe Content-Disposition."""
        import base64

        name = data.draw(hostileNames(), label="filename")
        filetype = data.draw(st.one_of(st.just(b"text/plain"), hostileNames()), label="filetype")
        metadata = f"filename {base64.b64encode(name).decode()},filetype {base64.b64encode(filetype).decode()}"
        payload = wireRequest("POST", "/files/", [("Tus-Resumable", "1.0.0"), ("Upload-Length", "5"),
                                                  ("Upload-Metadata", metadata), ("Content-Type", OCTETS)], b"hello")
        before = self.begin(payload)
        answer = self.send(payload, "POST")
        self.verdict(answer, "POST", (201,), before)
        if answer is None or answer.status != 201:
            return
        uploadId = (answer.header("location") or "").rsplit("/", 1)[1]
        download = exchange(self.port, wireRequest("GET", f"/files/{uploadId}", []), "GET")
        assert download is not None and download.status == 200 and download.body == b"hello", download
        disposition = [v for k, v in download.headerList if k == "content-disposition"]
        assert len(disposition) == 1 and disposition[0].startswith("attachment"), download
        assert all(32 <= ord(c) < 127 for c in disposition[0]), disposition
        plain = disposition[0].split('filename="', 1)[-1].split('"', 1)[0]
        assert "/" not in plain and "\\" not in plain, disposition
        assert download.header("content-type") in ("text/plain", "application/octet-stream"), download
        head = exchange(self.port, wireRequest("HEAD", f"/files/{uploadId}", [("Tus-Resumable", "1.0.0")]), "HEAD")
        assert head is not None and head.header("upload-metadata") == metadata, head

    @examples(60)
    @given(st.data())
    def test_facadeFinalizeFilename(self, data: Any) -> None:
        """A hostile finalize filename: published under a safe name inside the completed area."""
        created = exchange(self.port, wireRequest("POST", "/uploads", [("Upload-Length", "5")]), "POST")
        assert created is not None and created.status == 201, created
        uploadId = (created.header("location") or "").rsplit("/", 1)[1]
        token = created.header("upload-token") or ""
        patched = exchange(self.port, wireRequest("PATCH", f"/uploads/{uploadId}",
                                                  [("Upload-Offset", "0"), ("Content-Type", OCTETS)], b"hello"), "PATCH")
        assert patched is not None and patched.status == 204, patched
        name = data.draw(hostileNames(), label="filename")
        as_ = data.draw(st.sampled_from(["json string", "escaped", "raw bytes"]), label="encoding")
        if as_ == "json string":
            filename = json.dumps(name.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        elif as_ == "escaped":
            filename = json.dumps(name.decode("utf-8", "replace")).encode()
        else:
            filename = b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        body = b'{"uploadId": "%s", "uploadToken": "%s", "filename": %s}' % (uploadId.encode(), token.encode(), filename)
        payload = wireRequest("POST", "/uploads/finalize", [("Content-Type", "application/json")], body)
        before = self.begin(payload)
        answer = self.send(payload, "POST")

        def published(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            self.checkSidecars()
            record = json.loads(after[uploadId][0])
            checkSafeName(self, record["published"]["name"])
            self.assertEqual(after[uploadId][1], b"hello")

        self.verdict(answer, "POST", (200,), before, accepted=published)
