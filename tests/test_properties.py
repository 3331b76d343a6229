"""
Property-based tests of every protocol (issue 15): hypothesis generates
random and adversarial requests -- header values, duplicated headers,
bodies against their C{Content-Length}, query and form parameters,
multipart shapes, finalize JSON -- and every one of them must leave chunkd
as a hostile client on the open internet should find it:

 1. the answer is a 4xx with a one-line reason, or the documented success
    of that request (never a 5xx, never a traceback);
 2. chunkd answers the next request (C{GET /health});
 3. no file appears outside the storage directory;
 4. a refused request changes no upload's recorded state (every record,
    and the bytes each claims, compared before and after), and an accepted
    one records exactly what was sent;
 5. nothing in the log has a traceback.

Why a separate process and a synchronous client: hypothesis drives a test
function synchronously, many times, and shrinks a failure by calling it
again; trial's tests run on the reactor, and a Deferred cannot be awaited
inside a C{@given} function.  So chunkd runs as a real process of its own
(L{tests.helpers.Daemon}, on a real socket of 127.0.0.1, with its own log
file and working directory), and each example speaks to it with a plain
socket (L{tests.helpers.exchange}: raw bytes out, so anything can be sent,
duplicated or cut; C{http.client}'s parser in).  Nothing is shared with the
reactor, the examples are independent of trial's machinery, and the log the
daemon writes is exactly what an operator would see.

Run time and reproducibility: the settings profile below runs a fixed
number of examples per property (chosen for the module to take a minute or
two on two busy cores) with C{derandomize=True}: CI tries the same inputs
every time, so a red run is reproducible and a green one cannot turn red by
chance.  Exploring further is one variable away:
C{CHUNKD_PROPERTY_EXAMPLES=2000 python -m twisted.trial tests.test_properties}
runs that many examples per property, randomized.  Each property prints how
many inputs it generated and how they were answered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.helpers import OCTETS, Answer, Daemon, StorageWatch, exchange, wireRequest

# -- how many examples ---------------------------------------------------------------

_EXPLORE = int(os.environ.get("CHUNKD_PROPERTY_EXAMPLES", "0"))
settings.register_profile(
    "chunkd",
    derandomize=not _EXPLORE,
    report_multiple_bugs=False,  # trial shows one exception, not a group
    database=None,  # nothing written into the work tree
    deadline=None,  # a request to a real process on a busy machine has no fixed time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=False,
)


def examples(n: int) -> Any:
    """The profile, with C{n} examples (or the exploring number)."""
    return settings(settings.get_profile("chunkd"), max_examples=_EXPLORE or n)


#: how many inputs each property generated, for the report (printed at the end).
GENERATED: Counter = Counter()

# -- strategies ------------------------------------------------------------------------

def headerText(size: int) -> st.SearchStrategy[str]:
    """
    Any header value but CR, LF and NUL: a split header, or a NUL (which
    twisted.web's parser answers with a bare 400 before chunkd sees the
    request), is a framing matter, not a protocol's.
    """
    return st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=size)


def often(value: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """C{value} about as often as all of C{others} together: adversarial, but not only."""
    return st.one_of(*([st.just(value)] * max(len(others), 1)), *others)


WEIRD_NUMBERS = ["", " ", "-1", "-0", "+5", "0x10", "1e3", "\u0663", "\uff15", "99999999999999999999",
                 "18446744073709551616", "9223372036854775807", "9223372036854775808", " 7 ", "007",
                 "5,5", "5 5", "NaN", "1.0", "\t3", "0" * 30 + "1", "1_000"]


def numberish(low: int = 0, high: int = 80) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(low, high).map(str), st.sampled_from(WEIRD_NUMBERS), headerText(12))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def metadataHeader() -> st.SearchStrategy[str]:
    key = st.one_of(st.sampled_from(["filename", "filetype", "name", "a", "filename"]),
                    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8))
    value = st.one_of(st.none(), st.binary(max_size=30).map(b64), headerText(12))
    pairs = st.lists(st.tuples(key, value), max_size=4).map(
        lambda ps: ",".join(k if v is None else f"{k} {v}" for k, v in ps))
    return st.one_of(pairs, headerText(60), st.just("filename " + "QUFB" * 2000),
                     st.sampled_from(["filename", ",", " , ", "filename  QQ==", "filename QQ", "a b c"]))


def checksumHeader(body: bytes) -> st.SearchStrategy[Optional[str]]:
    algos = st.sampled_from(["sha1", "md5", "sha256", "sha512", "SHA1", "crc32", "", "sha1 "])
    right = st.sampled_from(["sha1", "md5", "sha256", "sha512"]).map(
        lambda a: f"{a} {b64(hashlib.new(a, body).digest())}")
    wrong = st.tuples(algos, st.binary(max_size=64)).map(lambda t: f"{t[0]} {b64(t[1])}")
    return st.one_of(st.none(), right, wrong, headerText(40))


def contentTypes() -> st.SearchStrategy[Optional[str]]:
    return often(
        OCTETS,
        st.none(),
        st.sampled_from([OCTETS, OCTETS, "application/octet-stream", "APPLICATION/OFFSET+OCTET-STREAM",
                         OCTETS + "; charset=utf-8", "text/plain", "multipart/form-data",
                         "multipart/form-data; boundary=x", "application/json", ";", ""]),
        headerText(30))


#: how a body goes out: (mode, Content-Length value or None); modes are
#: "exact", "chunked", "none" (no body at all), "short" (the connection
#: ends before the announced length), "long" (bytes past it), "garbage".
def bodyModes() -> st.SearchStrategy[Tuple[str, int]]:
    return often(
        ("exact", 0), st.just(("exact", 0)),
        st.just(("chunked", 0)), st.just(("none", 0)),
        st.tuples(st.just("short"), st.integers(1, 50)),
        st.tuples(st.just("long"), st.integers(1, 20)),
    )


def withBody(method: str, target: "str | bytes", headers: List[Tuple[str, str]], body: bytes,
             mode: Tuple[str, int]) -> Tuple[bytes, bool, bytes]:
    """
    The request's bytes, whether the write side is closed after them, and
    the body the server can take as the request's (what the model expects).
    """
    kind, n = mode
    if kind == "chunked":
        return wireRequest(method, target, headers, body, chunked=True), False, body
    if kind == "none":
        return wireRequest(method, target, headers, b"", contentLength=None), False, b""
    if kind == "short":
        return wireRequest(method, target, headers, body, contentLength=len(body) + n), True, body
    if kind == "long":
        keep = max(len(body) - n, 0)
        return wireRequest(method, target, headers, body, contentLength=keep), False, body[:keep]
    return wireRequest(method, target, headers, body), False, body


def maybeDuplicate(data: Any, headers: List[Tuple[str, str]], values: st.SearchStrategy[str],
                   always: bool = False) -> None:
    """Sometimes (or C{always}) repeat one of C{headers} with another value, before or after it."""
    if headers and (always or data.draw(st.integers(0, 5), label="dup?") == 0):
        index = data.draw(st.integers(0, len(headers) - 1), label="dup which")
        name = headers[index][0]
        value = data.draw(values, label="dup value")
        headers.insert(data.draw(st.integers(0, len(headers)), label="dup where"), (name, value))


class Perturb:
    """
    Which of a request's parts an example bends: a few (most often none or
    one), so that a request refused for its first oddity does not hide
    what the others would have done.  C{p(name, good, bad)} is the good
    value, or one drawn from C{bad} if C{name} was chosen.
    """

    def __init__(self, data: Any, names: List[str], most: int = 3) -> None:
        self.data = data
        self.chosen = set(data.draw(st.lists(st.sampled_from(names), max_size=most, unique=True), label="bent"))

    def __call__(self, name: str, good: Any, bad: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(bad, label=name) if name in self.chosen else good


def tusVersion(data: Any) -> List[Tuple[str, str]]:
    version = data.draw(st.sampled_from(["1.0.0"] * 16 + [None, "0.2.2", "1.0", " 1.0.0", ""]),
                        label="Tus-Resumable")
    return [] if version is None else [("Tus-Resumable", version)]


# -- the multipart shapes ---------------------------------------------------------------

MULTIPART_SHAPES = ["normal"] * 12 + ["fileFirst", "noBoundary", "wrongBoundary",
                    "boundaryInData", "truncated", "hugeHeader", "manyParts", "noFile", "twoFiles",
                    "noClosing", "quotedBoundary", "emptyName"]


def multipartBody(fields: List[Tuple[str, str]], fileField: str, data: bytes, shape: str,
                  cut: int = 0) -> Tuple[str, bytes]:
    """
    A C{multipart/form-data} content type and body of C{shape}: fields,
    then the file part (the browsers' order), bent as the shape says.
    """
    boundary = "----chunkdProperty" + secrets.token_hex(4)
    b = boundary.encode()

    def field(name: str, value: bytes) -> bytes:
        return (b"--" + b + b"\r\nContent-Disposition: form-data; name=\"" + name.encode("utf-8", "replace")
                + b"\"\r\n\r\n" + value + b"\r\n")

    def filePart(payload: bytes, extraHeader: bytes = b"") -> bytes:
        return (b"--" + b + b"\r\nContent-Disposition: form-data; name=\"" + fileField.encode()
                + b"\"; filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n" + extraHeader
                + b"\r\n" + payload + b"\r\n")

    fieldParts = [field(n, v.encode("utf-8", "surrogatepass")) for n, v in fields]
    closing = b"--" + b + b"--\r\n"
    contentType = f"multipart/form-data; boundary={boundary}"
    if shape == "fileFirst":
        body = filePart(data) + b"".join(fieldParts) + closing
    elif shape == "noBoundary":
        contentType = "multipart/form-data"
        body = b"".join(fieldParts) + filePart(data) + closing
    elif shape == "wrongBoundary":
        contentType = "multipart/form-data; boundary=somethingElse"
        body = b"".join(fieldParts) + filePart(data) + closing
    elif shape == "quotedBoundary":
        contentType = f'multipart/form-data; boundary="{boundary}"'
        body = b"".join(fieldParts) + filePart(data) + closing
    elif shape == "boundaryInData":
        half = len(data) // 2
        body = b"".join(fieldParts) + filePart(data[:half] + b"\r\n--" + b + data[half:]) + closing
    elif shape == "truncated":
        whole = b"".join(fieldParts) + filePart(data) + closing
        body = whole[: max(0, len(whole) - 1 - cut % len(whole))]
    elif shape == "hugeHeader":
        body = b"".join(fieldParts) + filePart(data, b"X-Filler: " + b"x" * 100000 + b"\r\n") + closing
    elif shape == "manyParts":
        body = b"".join(field(f"f{i}", b"v") for i in range(3000)) + b"".join(fieldParts) + filePart(data) + closing
    elif shape == "noFile":
        body = b"".join(fieldParts) + closing
    elif shape == "twoFiles":
        body = b"".join(fieldParts) + filePart(data) + filePart(data[::-1]) + closing
    elif shape == "noClosing":
        body = b"".join(fieldParts) + filePart(data)
    elif shape == "emptyName":
        body = b"".join(fieldParts) + field("", b"x") + filePart(data) + closing
    else:
        body = b"".join(fieldParts) + filePart(data) + closing
    return contentType, body


# -- the properties, checked for every example -----------------------------------------------


class PropertyCase(unittest.SynchronousTestCase):
    """
    A real chunkd process for each test, and the checks every example
    must pass.
    """

    daemonConfig: Dict[str, Any] = {}

    def setUp(self) -> None:
        self.daemon = Daemon(dict(self.daemonConfig), ownCwd=True)
        self.addCleanup(self.daemon.stop)
        self.port = self.daemon.port
        self.watch = StorageWatch(self.daemon)
        self.answers: Counter = Counter()
        self.addCleanup(self._report)

    def _report(self) -> None:
        name = self.id().rsplit(".", 1)[-1]
        total = sum(self.answers.values())
        GENERATED[name] += total
        byStatus = ", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items(), key=str))
        sys.stdout.write(f"\n[properties] {name}: {total} generated requests ({byStatus})\n")
        sys.stdout.flush()

    def begin(self, payload: bytes) -> Dict[str, Any]:
        """
        The state before the example's request; its log starts here (a
        line logged by set-up requests or by an earlier example is not its).
        """
        self.payload = payload
        self.watch.newLog()
        return self.watch.state()

    def send(self, payload: bytes, method: str, shutWrite: bool = False) -> Optional[Answer]:
        return exchange(self.port, payload, method=method.split()[0], shutWrite=shutWrite)

    def create(self, path: str, headers: List[Tuple[str, str]]) -> str:
        """A well-formed creation (set-up, not under test): the new id."""
        answer = self.send(wireRequest("POST", path, headers), "POST")
        assert answer is not None and answer.status == 201, answer
        location = answer.header("location")
        assert location is not None
        return location.rsplit("/", 1)[1]

    def patch(self, path: str, offset: int, body: bytes, extra: List[Tuple[str, str]] = []) -> Answer:
        headers = [("Tus-Resumable", "1.0.0"), ("Upload-Offset", str(offset)), ("Content-Type", OCTETS)]
        answer = self.send(wireRequest("PATCH", path, headers + extra, body), "PATCH")
        assert answer is not None and answer.status == 204, answer
        return answer

    def verdict(self, answer: Optional[Answer], method: str, success: Tuple[int, ...],
                before: Dict[str, Any], cut: bool = False,
                accepted: Optional[Callable[[Dict[str, Any], Dict[str, Any]], None]] = None) -> None:
        """
        The properties every example must have.  C{cut}: the request's
        connection ended before its body (no answer is due, and bytes that
        arrived may be kept -- C{accepted} checks what was).  C{accepted}
        checks a success against the state before and after.
        """
        try:
            self._verdict(answer, method, success, before, cut, accepted)
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe request: {self.payload[:1500]!r}") from None

    def _verdict(self, answer: Optional[Answer], method: str, success: Tuple[int, ...],
                 before: Dict[str, Any], cut: bool,
                 accepted: Optional[Callable[[Dict[str, Any], Dict[str, Any]], None]]) -> None:
        after = self.watch.state()
        if answer is None:
            self.answers[f"{method} cut, no answer"] += 1
            assert cut, "the connection closed without an answer"
        else:
            self.answers[f"{method} {answer.status}"] += 1
            assert answer.status < 500, f"{method}: {answer!r}"
            if answer.status >= 400:
                if method != "HEAD":
                    text = answer.body.decode("utf-8")
                    assert text.endswith("\n") and text.count("\n") == 1 and len(text.strip()) > 0, \
                        f"not a one-line reason: {answer!r}"
                if not cut:
                    assert after == before, f"a refused request ({answer.status}) changed the state: " + \
                        _diff(before, after)
            else:
                assert answer.status in success, f"{method}: {answer.status} is not a documented success: {answer!r}"
        if (answer is None or answer.status < 400) and accepted is not None:
            accepted(before, after)
        health = exchange(self.port, wireRequest("GET", "/health", []), "GET")
        assert health is not None and health.status == 200, f"chunkd stopped answering: {health!r}"
        log = self.watch.newLog()
        for bad in ("Traceback", "Unhandled", "unexpected error"):
            assert bad not in log, f"the log has {bad!r}:\n{log}"
        outside = self.watch.newOutside()
        assert not outside, f"files outside the storage directory: {outside}"


def _diff(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return "\n".join(lines)[:3000]


def claimedOf(after: Dict[str, Any], uploadId: str) -> Optional[bytes]:
    entry = after.get(uploadId)
    return None if entry is None else entry[1]


def recordOf(after: Dict[str, Any], uploadId: str) -> Dict[str, Any]:
    return json.loads(after[uploadId][0])


# -- tus -------------------------------------------------------------------------------------


class TusProperties(PropertyCase):
    """tus 1.0.0 at /files/: creation (with upload), PATCH, HEAD, DELETE, concatenation."""

    daemonConfig = {"limits": {"max_size": 4096, "max_metadata_size": 2048}}

    @examples(120)
    @given(st.data())
    def test_creation(self, data: Any) -> None:
        """POST /files/ with any headers and body: 201 with exactly the body's bytes, or a clean 4xx."""
        bend = Perturb(data, ["version", "Upload-Length", "Upload-Defer-Length", "Upload-Concat", "Upload-Metadata",
                              "Content-Type", "Upload-Checksum", "duplicate", "body mode"])
        headers = bend("version", [("Tus-Resumable", "1.0.0")], st.builds(tusVersion, st.data()))
        deferredKind = data.draw(st.booleans(), label="deferred?")
        length = bend("Upload-Length", None if deferredKind else str(data.draw(st.integers(0, 120), label="length")),
                      st.one_of(st.none(), numberish(0, 120), st.just("5000")))
        deferred = bend("Upload-Defer-Length", "1" if deferredKind else None,
                        st.one_of(st.none(), st.sampled_from(["1", "0", "2", "", " 1", "true"])))
        concat = bend("Upload-Concat", data.draw(st.sampled_from([None, None, "partial"]), label="partial?"),
                      st.one_of(st.sampled_from(["Partial", "partial;", "final", "finale", ""]), headerText(20)))
        metadata = bend("Upload-Metadata", data.draw(st.sampled_from([None, "filename Y2xpcC5tcDQ="]), label="meta"),
                        metadataHeader())
        contentType = bend("Content-Type", data.draw(st.sampled_from([OCTETS, None]), label="with upload?"),
                           contentTypes())
        body = data.draw(st.binary(max_size=150), label="body")
        checksum = bend("Upload-Checksum", None, checksumHeader(body))
        for name, value in (("Upload-Length", length), ("Upload-Defer-Length", deferred),
                            ("Upload-Concat", concat), ("Upload-Metadata", metadata),
                            ("Content-Type", contentType), ("Upload-Checksum", checksum)):
            if value is not None:
                headers.append((name, value))
        if "duplicate" in bend.chosen:
            maybeDuplicate(data, headers, numberish(), always=True)
        mode = bend("body mode", ("exact", 0), bodyModes())
        payload, shut, sent = withBody("POST", "/files/", headers, body, mode)
        before = self.begin(payload)
        answer = self.send(payload, "POST", shut)

        def created(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            new = set(after) - set(before)
            assert len(new) <= 1, new
            if answer is None:
                if new:  # cut mid-body: what was kept is a prefix of what was sent
                    claimed = claimedOf(after, new.pop())
                    assert claimed is not None and sent.startswith(claimed)
                return
            assert len(new) == 1, "a 201 without a new upload"
            uploadId = new.pop()
            location = answer.header("location") or ""
            assert location.endswith("/files/" + uploadId), location
            offset = int(answer.header("upload-offset") or 0)
            claimed = claimedOf(after, uploadId)
            assert claimed == sent[:offset], (claimed, sent, offset)
            head = exchange(self.port, wireRequest("HEAD", f"/files/{uploadId}", [("Tus-Resumable", "1.0.0")]), "HEAD")
            assert head is not None and head.status == 200 and head.header("upload-offset") == str(offset), head

        self.verdict(answer, "POST", (201,), before, cut=shut, accepted=created)

    @examples(150)
    @given(st.data())
    def test_requestsOnAnUpload(self, data: Any) -> None:
        """PATCH, HEAD, DELETE and more on an upload: recorded exactly as sent, or refused changing nothing."""
        kind = data.draw(st.sampled_from(["plain", "plain", "deferred", "partial", "complete"]), label="kind")
        length = data.draw(st.integers(1, 48), label="length")
        content = data.draw(st.binary(min_size=length, max_size=length), label="content")
        pre = length if kind == "complete" else data.draw(st.integers(0, length - 1), label="prewritten")
        create = [("Tus-Resumable", "1.0.0")]
        create.append(("Upload-Defer-Length", "1") if kind == "deferred" else ("Upload-Length", str(length)))
        if kind == "partial":
            create.append(("Upload-Concat", "partial"))
        uploadId = self.create("/files/", create)
        if pre:
            self.patch(f"/files/{uploadId}", 0, content[:pre])

        bend = Perturb(data, ["version", "target", "Upload-Offset", "Content-Type", "body", "Upload-Checksum",
                              "Upload-Length", "duplicate", "override", "body mode"])
        method = data.draw(st.sampled_from(["PATCH"] * 8 + ["HEAD", "HEAD", "DELETE", "GET", "OPTIONS", "PUT"]),
                           label="method")
        override = bend("override", False, st.booleans())
        target = bend("target", uploadId, st.one_of(st.just(secrets.token_hex(16)), st.sampled_from(
            ["../" + uploadId, uploadId.upper(), uploadId + "/x", uploadId[:-1], "%2e%2e", "..", "",
             uploadId + "%00", uploadId + "?x=1"])))
        headers = bend("version", [("Tus-Resumable", "1.0.0")], st.builds(tusVersion, st.data()))
        offset = bend("Upload-Offset", str(pre), st.one_of(st.none(), numberish(0, 60)))
        if offset is not None:
            headers.append(("Upload-Offset", offset))
        contentType = bend("Content-Type", OCTETS, contentTypes())
        if contentType is not None:
            headers.append(("Content-Type", contentType))
        size = data.draw(st.integers(0, length - pre), label="body size")
        body = bend("body", content[pre:pre + size], st.one_of(
            st.integers(0, length + 4).map(lambda n: content[pre:pre + n]), st.binary(max_size=60)))
        checksum = bend("Upload-Checksum", None, checksumHeader(body))
        if checksum is not None:
            headers.append(("Upload-Checksum", checksum))
        newLength = bend("Upload-Length", None, st.one_of(st.just(str(length)), numberish(0, 60)))
        if newLength is not None:
            headers.append(("Upload-Length", newLength))
        if "duplicate" in bend.chosen:
            maybeDuplicate(data, headers, numberish(0, 60), always=True)
        verb = method
        if override:
            headers.append(("X-HTTP-Method-Override", method))
            verb = "POST"
        mode = bend("body mode", ("exact", 0), bodyModes()) if method in ("PATCH", "PUT") else ("none", 0)
        payload, shut, sent = withBody(verb, f"/files/{target}", headers, body, mode)
        before = self.begin(payload)
        answer = self.send(payload, method, shut)

        def recorded(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            old = claimedOf(before, uploadId)
            new = claimedOf(after, uploadId)
            if method == "PATCH" or (answer is None and method == "PUT"):
                assert old is not None and new is not None
                assert new.startswith(old) and sent.startswith(new[len(old):]), (old, new, sent)
                if answer is not None:
                    assert new == old + sent, (old, new, sent)
                    assert answer.header("upload-offset") == str(len(new)), answer
            elif method == "DELETE":
                assert recordOf(after, uploadId)["state"] == "terminated"
            else:
                assert after == before, _diff(before, after)

        success = {"PATCH": (204,), "HEAD": (200,), "DELETE": (204,), "GET": (200,), "OPTIONS": (200, 204),
                   "PUT": ()}[method]
        self.verdict(answer, method, success, before, cut=shut, accepted=recorded)

    @examples(60)
    @given(st.data())
    def test_concatenation(self, data: Any) -> None:
        """Upload-Concat: final with any list of URLs: the parts' bytes in order, or a clean 4xx."""
        parts = []
        for n in range(data.draw(st.integers(1, 3), label="parts")):
            length = data.draw(st.integers(0, 20), label="part length")
            content = data.draw(st.binary(min_size=length, max_size=length), label="part content")
            partId = self.create("/files/", [("Tus-Resumable", "1.0.0"), ("Upload-Length", str(length)),
                                             ("Upload-Concat", "partial")])
            done = data.draw(st.booleans(), label="part finished?")
            if done and length:
                self.patch(f"/files/{partId}", 0, content)
            parts.append((partId, content if done or not length else None))
        plain = self.create("/files/", [("Tus-Resumable", "1.0.0"), ("Upload-Length", "3")])
        port = self.port
        url = st.one_of(
            st.sampled_from([p for p, _ in parts]).flatmap(lambda p: st.sampled_from(
                [f"/files/{p}", f"http://127.0.0.1:{port}/files/{p}", f"https://elsewhere.example/files/{p}",
                 f"/files/{p}/", f"/other/{p}", f"/files/../files/{p}", p])),
            st.sampled_from([f"/files/{plain}", f"/files/{secrets.token_hex(16)}", "/files/", "http://",
                             "::::", "/files/" + "a" * 32, "%2Ffiles%2F" + plain]),
            headerText(20))
        bend = Perturb(data, ["version", "urls", "separator", "Upload-Length", "Upload-Metadata"], most=2)
        good = [f"/files/{p}" if i % 2 else f"http://127.0.0.1:{port}/files/{p}" for i, (p, _) in enumerate(parts)]
        urls = bend("urls", good, st.lists(url, max_size=6))
        separator = bend("separator", ";", st.sampled_from(["; ", "", ";;", " ;"]))
        headers = bend("version", [("Tus-Resumable", "1.0.0")], st.builds(tusVersion, st.data()))
        headers.append(("Upload-Concat", "final" + separator + " ".join(urls)))
        length = bend("Upload-Length", None, numberish())
        if length is not None:
            headers.append(("Upload-Length", length))
        metadata = bend("Upload-Metadata", None, metadataHeader())
        if metadata is not None:
            headers.append(("Upload-Metadata", metadata))
        payload = wireRequest("POST", "/files/", headers)
        before = self.begin(payload)
        answer = self.send(payload, "POST")

        def assembled(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            assert answer is not None
            new = set(after) - set(before)
            assert len(new) == 1
            finalId = new.pop()
            named = [u.rstrip("/").rsplit("/", 1)[-1] for u in urls]
            contents = dict(parts)
            head = exchange(self.port, wireRequest("HEAD", f"/files/{finalId}", [("Tus-Resumable", "1.0.0")]), "HEAD")
            assert head is not None and head.status == 200, head
            if all(contents.get(p) is not None for p in named):
                expected = b"".join(contents[p] or b"" for p in named)
                assert head.header("upload-offset") == str(len(expected)), head
                assert claimedOf(self.watch.state(), finalId) == expected

        self.verdict(answer, "POST", (201,), before, accepted=assembled)


# -- Resumable.js and flow.js -------------------------------------------------------------------


RESUMABLE_NAMES = ["ChunkNumber", "ChunkSize", "CurrentChunkSize", "TotalSize", "TotalChunks",
                   "Identifier", "Filename", "RelativePath", "Type"]


class ChunkProperties(PropertyCase):
    """Resumable.js at /resumable and flow.js at /flow: test GETs and chunk POSTs, octet and multipart."""

    daemonConfig = {"limits": {"max_size": 100000}}

    def geometry(self, data: Any) -> Tuple[bytes, int, int]:
        """A file as the clients cut it: content, chunk size, chunk count."""
        size = data.draw(st.integers(0, 60), label="file size")
        content = data.draw(st.binary(min_size=size, max_size=size), label="file")
        chunkSize = data.draw(st.integers(1, 24), label="chunk size")
        force = data.draw(st.booleans(), label="forceChunkSize")
        count = max(-(-size // chunkSize) if force else size // chunkSize, 1)
        return content, chunkSize, count

    @staticmethod
    def chunkBytes(content: bytes, chunkSize: int, count: int, number: int) -> bytes:
        start = (number - 1) * chunkSize
        end = len(content) if number == count else min(len(content), number * chunkSize)
        return content[start:end]

    @examples(200)
    @given(st.data())
    def test_chunks(self, data: Any) -> None:
        """A test GET or a chunk POST/PUT with any parameters and body shape: stored exactly, or a clean 4xx."""
        prefix = data.draw(st.sampled_from(["resumable", "flow"]), label="dialect")
        content, chunkSize, count = self.geometry(data)
        identifier = data.draw(st.one_of(st.just(f"{len(content)}-file{secrets.token_hex(4)}"),
                                         st.sampled_from(["shared-a", "shared-b"])), label="identifier")
        filename = data.draw(st.one_of(st.just("clip.mp4"), st.just("shared.bin")), label="filename")
        # Earlier chunks of the same file, sent properly (set-up).
        stored = set()
        for number in range(1, count + 1):
            if data.draw(st.integers(0, 2), label="prestored?") == 0 and number < count:
                params = self.params(prefix, content, chunkSize, count, number, identifier, filename)
                answer = self.send(wireRequest("POST", self.target(prefix, params),
                                               [("Content-Type", "application/octet-stream")],
                                               self.chunkBytes(content, chunkSize, count, number)), "POST")
                assert answer is not None and answer.status in (200, 400), answer
                if answer.status == 200:
                    stored.add(number)

        number = data.draw(st.integers(1, count), label="chunk number")
        params = self.params(prefix, content, chunkSize, count, number, identifier, filename)
        bend = Perturb(data, list(params) + ["extra", "body", "shape", "conflict", "Content-Type", "body mode"])
        for name in list(params):
            value = bend(name, params[name], st.one_of(st.none(), numberish(0, 70)))
            if value is None:
                del params[name]
            else:
                params[name] = value
        if "extra" in bend.chosen:
            params[data.draw(st.text(max_size=10), label="extra name")] = data.draw(st.text(max_size=10), label="extra")
        method = data.draw(st.sampled_from(["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH"]),
                           label="method")
        chunk = self.chunkBytes(content, chunkSize, count, number)
        body = bend("body", chunk, st.binary(max_size=40))
        multipart = method in ("POST", "PUT") and data.draw(st.booleans(), label="multipart?")
        shut = False
        sent = body
        if multipart:
            shape = bend("shape", "normal", st.sampled_from(MULTIPART_SHAPES))
            inQuery = prefix == "resumable" and data.draw(st.booleans(), label="query too?")
            fields = list(params.items())
            if "conflict" in bend.chosen and fields:
                name, value = fields[0]
                fields.append((name, value + "x"))
            contentType, payloadBody = multipartBody(fields, "file", body, shape,
                                                     cut=data.draw(st.integers(0, 500), label="cut"))
            payload = wireRequest(method, self.target(prefix, params if inQuery else {}),
                                  [("Content-Type", contentType)], payloadBody)
        else:
            headers = []
            contentType = bend("Content-Type", "application/octet-stream", st.one_of(st.none(), contentTypes()))
            if contentType is not None:
                headers.append(("Content-Type", contentType))
            mode = bend("body mode", ("exact", 0), bodyModes()) if method in ("POST", "PUT") else ("none", 0)
            payload, shut, sent = withBody(method, self.target(prefix, params), headers, body, mode)
        before = self.begin(payload)
        answer = self.send(payload, method, shut)
        uploadId = hashlib.sha256(b"chunkd-chunk-upload\0" + prefix.encode() + b"\0"
                                  + params.get(prefix + "Identifier", identifier).encode()).hexdigest()[:32]

        def stored_(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            if answer is None:
                assert after == before, "a cut chunk was recorded: " + _diff(before, after)
                return
            if method == "GET":
                assert after == before, _diff(before, after)
                return
            answered = json.loads(answer.body)
            assert answered["uploadId"] == uploadId, answered
            record = recordOf(after, uploadId)
            if record.get("published"):
                published = claimedOf(after, uploadId)
                assert published is not None and len(published) == record["extra"]["totalSize"]
            else:
                claimed = claimedOf(after, uploadId) or b""
                n = record["extra"]["totalChunks"]
                assert int(params.get(prefix + "ChunkNumber", "0")) <= n
                assert (b"%d:" % (answered["chunk"] - 1)) in claimed, (claimed, answered)

        self.verdict(answer, method, {"GET": (200, 204), "POST": (200,), "PUT": (200,)}.get(method, ()),
                     before, cut=shut, accepted=stored_)

    def params(self, prefix: str, content: bytes, chunkSize: int, count: int, number: int,
               identifier: str, filename: str) -> Dict[str, str]:
        values = {
            "ChunkNumber": str(number), "ChunkSize": str(chunkSize),
            "CurrentChunkSize": str(len(self.chunkBytes(content, chunkSize, count, number))),
            "TotalSize": str(len(content)), "TotalChunks": str(count), "Identifier": identifier,
            "Filename": filename, "RelativePath": "dir/" + filename, "Type": "video/mp4",
        }
        if prefix == "flow":
            del values["Type"]
        return {prefix + k: v for k, v in values.items()}

    @staticmethod
    def target(prefix: str, params: Dict[str, str]) -> str:
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
        return f"/{prefix}" + (f"?{query}" if query else "")


# -- the chunked-upload facade ----------------------------------------------------------------


class FacadeProperties(PropertyCase):
    """The facade at /uploads: creation, raw and multipart PATCH, HEAD, finalize JSON."""

    daemonConfig = {"uploads": {"max_chunk_size": 32}, "limits": {"max_size": 4096}}

    def setupUpload(self, data: Any) -> Tuple[str, str, bytes, int]:
        length = data.draw(st.integers(0, 40), label="length")
        content = data.draw(st.binary(min_size=length, max_size=length), label="content")
        answer = self.send(wireRequest("POST", "/uploads", [("Upload-Length", str(length))]), "POST")
        assert answer is not None and answer.status == 201, answer
        uploadId = (answer.header("location") or "").rsplit("/", 1)[1]
        token = answer.header("upload-token") or ""
        pre = data.draw(st.integers(0, length), label="prewritten")
        for start in range(0, pre, 32):
            self.patch(f"/uploads/{uploadId}", start, content[start:min(pre, start + 32)])
        return uploadId, token, content, pre

    @examples(150)
    @given(st.data())
    def test_requests(self, data: Any) -> None:
        """Creation, PATCH (raw or multipart) and HEAD: recorded exactly as sent, or a clean 4xx."""
        uploadId, token, content, pre = self.setupUpload(data)
        length = len(content)
        method = data.draw(st.sampled_from(["PATCH"] * 6 + ["HEAD", "POST", "DELETE"]), label="method")
        bend = Perturb(data, ["version", "Upload-Length", "Upload-Metadata", "target", "Upload-Offset", "token",
                              "chunk", "Upload-Checksum", "shape", "fields", "part name", "Content-Type",
                              "duplicate", "body mode"])
        headers = bend("version", [("Tus-Resumable", "1.0.0")] if data.draw(st.booleans(), label="tus?") else [],
                       st.builds(tusVersion, st.data()))
        if method == "POST":
            target = "/uploads"
            value = bend("Upload-Length", str(data.draw(st.integers(0, 50), label="new length")),
                         st.one_of(st.none(), numberish(0, 5000)))
            if value is not None:
                headers.append(("Upload-Length", value))
            metadata = bend("Upload-Metadata", None, metadataHeader())
            if metadata is not None:
                headers.append(("Upload-Metadata", metadata))
        else:
            target = bend("target", f"/uploads/{uploadId}", st.sampled_from(
                [f"/uploads/{secrets.token_hex(16)}", "/uploads/finalize", f"/uploads/{uploadId}/",
                 f"/uploads/../files/{uploadId}", f"/uploads/{uploadId.upper()}"]))
            offset = bend("Upload-Offset", str(pre), st.one_of(st.none(), numberish(0, 60)))
            if offset is not None:
                headers.append(("Upload-Offset", offset))
            given_ = bend("token", None, st.sampled_from([token, "nope", ""]))
            if given_ is not None:
                headers.append(("X-Upload-Token", given_))
        size = data.draw(st.integers(0, max(0, min(32, length - pre))), label="chunk size")
        chunk = bend("chunk", content[pre:pre + size], st.one_of(
            st.integers(0, 40).map(lambda n: content[pre:pre + n]), st.binary(max_size=70)))
        checksum = bend("Upload-Checksum", None, checksumHeader(chunk))
        if checksum is not None:
            headers.append(("Upload-Checksum", checksum))
        multipart = method == "PATCH" and data.draw(st.booleans(), label="multipart?")
        shut = False
        sent = chunk
        if multipart:
            shape = bend("shape", "normal", st.sampled_from(MULTIPART_SHAPES))
            fields = bend("fields", [], st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3))
            fileField = bend("part name", "chunk", st.sampled_from(["file", "Chunk", "chunk ", ""]))
            contentType, body = multipartBody(fields, fileField, chunk, shape,
                                              cut=data.draw(st.integers(0, 500), label="cut"))
            headers.append(("Content-Type", contentType))
            if "duplicate" in bend.chosen:
                maybeDuplicate(data, headers, numberish(0, 60), always=True)
            payload = wireRequest(method, target, headers, body)
        else:
            contentType = bend("Content-Type", OCTETS if method == "PATCH" else None, contentTypes())
            if contentType is not None:
                headers.append(("Content-Type", contentType))
            if "duplicate" in bend.chosen:
                maybeDuplicate(data, headers, numberish(0, 60), always=True)
            mode = bend("body mode", ("exact", 0), bodyModes()) if method == "PATCH" else ("none", 0)
            payload, shut, sent = withBody(method, target, headers, chunk, mode)
        before = self.begin(payload)
        answer = self.send(payload, method, shut)

        def recorded(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            if method == "PATCH":
                old, new = claimedOf(before, uploadId), claimedOf(after, uploadId)
                assert old is not None and new is not None and new.startswith(old)
                assert sent.startswith(new[len(old):]), (old, new, sent)
                if answer is not None:
                    if multipart:
                        assert new == old + chunk, (old, new, chunk)
                    else:
                        assert new == old + sent, (old, new, sent)
                    assert answer.header("upload-offset") == str(len(new)), answer
                    assert len(new) <= length
            elif method == "POST":
                assert answer is not None
                assert len(set(after) - set(before)) == 1
            else:
                assert after == before, _diff(before, after)

        success = {"PATCH": (204,), "HEAD": (200,), "POST": (201,), "DELETE": ()}[method]
        self.verdict(answer, method, success, before, cut=shut, accepted=recorded)

    @examples(120)
    @given(st.data())
    def test_finalize(self, data: Any) -> None:
        """POST /uploads/finalize with any JSON: the documented answer, or a clean 4xx changing nothing."""
        uploadId, token, content, pre = self.setupUpload(data)
        if data.draw(st.booleans(), label="complete it?") and pre < len(content):
            for start in range(pre, len(content), 32):
                self.patch(f"/uploads/{uploadId}", start, content[start:start + 32])
            pre = len(content)
        jsonValue = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                 max_leaves=6)
        document: Dict[str, Any] = {}
        for name, good in (("uploadId", uploadId), ("filename", "clip.mp4"), ("uploadToken", token)):
            choice = data.draw(st.integers(0, 9), label=f"{name} kind")
            if choice <= 5:
                document[name] = good
            elif choice == 6:
                pass
            elif choice == 7:
                document[name] = data.draw(jsonValue, label=name)
            else:
                document[name] = data.draw(st.one_of(st.text(max_size=40), st.sampled_from(
                    [secrets.token_hex(16), "../" + uploadId, uploadId.upper(), "", "\x00", "a" * 10000])), label=name)
        if data.draw(st.integers(0, 6), label="extra?") == 0:
            document[data.draw(st.text(max_size=8), label="extra key")] = data.draw(jsonValue, label="extra value")
        shape = data.draw(st.sampled_from(["object"] * 8 + ["list", "string", "number", "invalid", "notUtf8",
                                                             "deep", "huge", "empty", "duplicateKeys"]),
                          label="body shape")
        body = {
            "object": lambda: json.dumps(document).encode(),
            "list": lambda: json.dumps([document]).encode(),
            "string": lambda: b'"uploadId"',
            "number": lambda: b"12",
            "invalid": lambda: json.dumps(document).encode()[:-1],
            "notUtf8": lambda: b'{"uploadId": "\xff\xfe", "filename": "a"}',
            "deep": lambda: b"[" * 30000 + b"]" * 30000,
            "huge": lambda: json.dumps(dict(document, pad="x" * 70000)).encode(),
            "empty": lambda: b"",
            "duplicateKeys": lambda: (b'{"uploadId": "%s", "uploadId": "%s", "filename": "a", "uploadToken": "%s"}'
                                      % (uploadId.encode(), secrets.token_hex(16).encode(), token.encode())),
        }[shape]()
        headers = [("Content-Type", data.draw(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"]),
                                              label="Content-Type"))]
        if data.draw(st.integers(0, 5), label="header token?") == 0:
            headers.append(("X-Upload-Token", data.draw(st.sampled_from([token, "wrong", ""]), label="X-Upload-Token")))
        payload = wireRequest("POST", "/uploads/finalize", headers, body)
        before = self.begin(payload)
        answer = self.send(payload, "POST")

        def finalized(before: Dict[str, Any], after: Dict[str, Any]) -> None:
            assert answer is not None
            answered = json.loads(answer.body)
            assert answered["videoId"] == uploadId and answered["size"] == len(content), answered
            assert answered["checksum"] == "sha256:" + hashlib.sha256(content).hexdigest()
            record = recordOf(after, uploadId)
            assert record["published"]["path"].startswith(self.watch.storage + "/complete/"), record
            assert claimedOf(after, uploadId) == content

        self.verdict(answer, "POST", (200,), before, accepted=finalized)
