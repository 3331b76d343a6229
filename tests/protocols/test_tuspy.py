"""
The public Python tus client, tuspy, against chunkd on a real socket.
tuspy is synchronous, so it runs in a thread while the reactor serves it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads

from tests.helpers import (
    TusTestCase,
    deferLater,
    h,
    patchHead,
    randomBytes,
    rawRequest,
    requireTuspy,
    tuspyUploader,
)


class TuspyTests(TusTestCase):
    def setUp(self) -> Any:
        requireTuspy()
        return super().setUp()

    @defer.inlineCallbacks
    def test_multiChunkUploadWithChecksums(self) -> Any:
        data = randomBytes(3 * 1024 * 1024 + 12345)

        def upload() -> str:
            uploader = tuspyUploader(self.url("/files/"), data, 512 * 1024,
                                     upload_checksum=True, metadata={"filename": "movie.mp4"})
            uploader.upload()
            return uploader.url

        url = yield threads.deferToThread(upload)
        uploadId = url.rsplit("/", 1)[1]
        self.assertEqual(self.dataOf(uploadId), data)
        record = self.store.get(uploadId)
        self.assertEqual((record.state, record.metadata["filename"]), ("complete", "movie.mp4"))

    @defer.inlineCallbacks
    def test_resumeAfterConnectionCutMidPatch(self) -> Any:
        data = randomBytes(2 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        cut = 700 * 1024
        yield rawRequest(self.port.getHost().port, patchHead(uploadId, 0, len(data)) + data[:cut], closeAfter=0.3)
        for _ in range(50):
            r = yield self.head(uploadId)
            if h(r, "upload-offset") == str(cut):
                break
            yield deferLater(0.05)
        self.assertEqual(h(r, "upload-offset"), str(cut))

        def resume() -> int:
            uploader = tuspyUploader(self.url("/files/"), data, 256 * 1024, url=self.url(f"/files/{uploadId}"))
            start = uploader.offset
            uploader.upload()
            return start

        start = yield threads.deferToThread(resume)
        self.assertEqual(start, cut)
        self.assertEqual(self.dataOf(uploadId), data)
