"""
Streaming C{multipart/form-data}: form fields are collected (they are
small), and the file part's bytes go straight on to a L{BodySink} as they
arrive.

The parser is defnull's C{multipart} (C{PushMultipartParser}): pure Python,
maintained, already a dependency of treq, and a push parser -- it takes the
body piece by piece, exactly as C{handleContentChunk} delivers it, and hands
back payload slices without buffering a part.

The file sink is asked for when the file part's headers end, with the fields
seen so far: flow.js sends its parameters only as fields before the file,
so they are known by then.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from multipart import MultipartError, PushMultipartParser
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from chunkd.errors import BadRequest, UnsupportedMediaType, UploadError
from chunkd.streaming import BodySink

OpenFile = Callable[[Dict[str, str]], BodySink]


def boundaryOf(contentType: Optional[str]) -> bytes:
    """
    The boundary of a C{multipart/form-data} content type.

    @raise UnsupportedMediaType: it is not multipart/form-data.
    @raise BadRequest: it has no usable boundary.
    """
    if not contentType or contentType.split(";")[0].strip().lower() != "multipart/form-data":
        raise UnsupportedMediaType("Content-Type must be multipart/form-data")
    for param in contentType.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if 0 < len(value) <= 200:
                return value.encode("latin-1")
    raise BadRequest("multipart/form-data without a boundary")


class MultipartSink:
    """
    A body sink for C{multipart/form-data} that sends the part named
    C{fileField} to the sink C{openFile(fields)} returns.

    @ivar fields: the form fields read so far (text).
    """

    maxFieldSize = 64 * 1024
    maxFields = 64

    def __init__(self, boundary: bytes, fileField: str, openFile: OpenFile) -> None:
        self.parser = PushMultipartParser(boundary, max_header_count=16)
        self.fileField = fileField
        self.openFile = openFile
        self.fields: Dict[str, str] = {}
        self._field: Optional[str] = None
        self._fieldData: List[bytes] = []
        self._fieldSize = 0
        self._file: Optional[BodySink] = None
        self._inFile = False
        self._error: Optional[UploadError] = None

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            for event in self.parser.parse(data):
                self._event(event)
        except MultipartError as e:
            self._fail(BadRequest(f"malformed multipart body: {e}"))
        except UploadError as e:
            self._fail(e)

    def _event(self, event: object) -> None:
        if event is None:  # end of a part
            if self._inFile:
                self._inFile = False
                assert self._file is not None
                self._file.bodyEnded(Headers())
            elif self._field is not None:
                if len(self.fields) >= self.maxFields:
                    raise BadRequest("too many form fields")
                self.fields[self._field] = b"".join(self._fieldData).decode("utf-8", "replace")
                self._field = None
        elif isinstance(event, (bytes, bytearray, memoryview)):
            if self._inFile:
                assert self._file is not None
                self._file.dataReceived(bytes(event) if isinstance(event, bytearray) else event)  # type: ignore[arg-type]
            elif self._field is not None:
                self._fieldSize += len(event)
                if self._fieldSize > self.maxFieldSize:
                    raise BadRequest(f"form field {self._field!r} is too large")
                self._fieldData.append(bytes(event))
        else:  # a new part's headers
            name = getattr(event, "name", None) or ""
            if name == self.fileField and self._file is None:
                self._file = self.openFile(dict(self.fields))
                self._inFile = True
            else:
                self._field = name
                self._fieldData = []
                self._fieldSize = 0

    def _fail(self, error: UploadError) -> None:
        self._error = error
        if self._inFile and self._file is not None:
            # The file part cannot be trusted past a parse error.
            self._file.bodyFailed(Failure(error))
            self._inFile = False

    def bodyEnded(self, trailers: Headers) -> None:
        if self._error is None:
            try:
                self.parser.close()
            except MultipartError as e:
                self._fail(BadRequest(f"incomplete multipart body: {e}"))
        if self._error is None and self._file is None:
            self._error = BadRequest(f"no form part named {self.fileField!r}")
        if self._inFile and self._file is not None:
            self._file.bodyFailed(Failure(self._error or BadRequest("file part not ended")))
            self._inFile = False

    def bodyFailed(self, reason: Failure) -> None:
        if self._inFile and self._file is not None:
            self._inFile = False
            self._file.bodyFailed(reason)

    def result(self) -> Deferred[object]:
        if self._file is not None:
            d = self._file.result()
            if self._error is not None:
                error = self._error
                d.addBoth(lambda _: fail(error))
            return d
        return fail(self._error or BadRequest(f"no form part named {self.fileField!r}"))

