"""
L{chunkd.informational.sendInformational} on a request double whose
transport records the bytes: the exact interim response, and every case
where none may be sent.
"""

from __future__ import annotations

from typing import Any, List

from twisted.trial import unittest

from chunkd.informational import sendInformational


class Transport:
    def __init__(self) -> None:
        self.written: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Channel:
    def __init__(self) -> None:
        self.transport: Any = Transport()


class Request:
    def __init__(self, clientproto: bytes = b"HTTP/1.1") -> None:
        self.channel: Any = Channel()
        self.clientproto = clientproto
        self.startedWriting = False
        self.finished = False


class SendInformationalTests(unittest.TestCase):
    def test_bytesOnTheWire(self) -> None:
        request = Request()
        self.assertTrue(sendInformational(request, 104, "Upload Resumption Supported",
                                          [("Location", "/rufh/abc"), ("Upload-Offset", "10")]))
        self.assertEqual(request.channel.transport.written, [
            b"HTTP/1.1 104 Upload Resumption Supported\r\nLocation: /rufh/abc\r\nUpload-Offset: 10\r\n\r\n"])

    def test_notWhenItCannotBeUnderstoodOrIsTooLate(self) -> None:
        for request in (Request(b"HTTP/1.0"), Request()):
            if request.clientproto == b"HTTP/1.1":
                request.startedWriting = True
            self.assertFalse(sendInformational(request, 104, "Upload Resumption Supported", []))
            self.assertEqual(request.channel.transport.written, [])
        gone = Request()
        gone.channel.transport = None
        self.assertFalse(sendInformational(gone, 104, "Upload Resumption Supported", []))

    def test_refusesWhatWouldBreakTheFraming(self) -> None:
        request = Request()
        for code in (100, 101, 200, 99):
            self.assertRaises(ValueError, sendInformational, request, code, "X", [])
        self.assertRaises(ValueError, sendInformational, request, 104, "X", [("Location", "a\r\nEvil: 1")])
        self.assertRaises(ValueError, sendInformational, request, 104, "X", [("Bad Name", "1")])
        self.assertEqual(request.channel.transport.written, [])
