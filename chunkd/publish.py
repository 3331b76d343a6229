"""
Publishing a finished upload: the one way any protocol hands an upload to
the application.

The steps, for every protocol, under the upload's exclusive lock:

  1. the record says where the file is going (L{UploadRecord.publishing}),
     durably, before anything moves;
  2. the sha256 comes from the running hash (L{chunkd.hashes}), or from
     the file for what it lacks;
  3. the data file is moved into the completed area with its sidecar
     (L{chunkd.complete.CompletedFiles}: one sidecar schema);
  4. the record gets its L{Publication} and becomes complete: the one
     completion mark, which the store announces as post-finish.

A crash, or a failed write, between 3 and 4 leaves a record that says
where its file went and a data file that is gone: L{Publisher.adopt}
finds the sidecar that names this upload and finishes step 4 from it, so
the next request answers as the first would have, and nothing is
published twice.  The store knows nothing of this; start-up reconciliation
only leaves a record with C{publishing} alone.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from twisted.internet.task import deferLater
from twisted.logger import Logger

from chunkd.complete import CompletedFiles
from chunkd.disk import DiskService
from chunkd.errors import ServiceUnavailable, dataGone, diskError
from chunkd.hashes import RunningHashes
from chunkd.store import COMPLETE, OpenUpload, Publication, UploadRecord, UploadStore


class Publisher:
    """
    Moves finished uploads into the completed-files area.

    @ivar hashes: the running hashes publishing draws on; protocols feed
        them as bytes arrive.
    """

    log = Logger()
    #: how long, and how often, L{adopt} looks for a publication another
    #: process has under way
    adoptWait = 10.0
    adoptPoll = 0.05

    def __init__(self, store: UploadStore, disk: DiskService, directory: str,
                 hashes: Optional[RunningHashes] = None) -> None:
        self.store = store
        self.disk = disk
        self.directory = os.path.abspath(directory)
        self.hashes = hashes if hashes is not None else RunningHashes(disk)
        self._completed: Optional[CompletedFiles] = None

    @property
    def completed(self) -> CompletedFiles:
        """
        The area, made on first use: a daemon that never publishes anything
        leaves no empty directory behind.
        """
        if self._completed is None:
            self._completed = CompletedFiles(self.directory)
        return self._completed

    async def publish(self, upload: OpenUpload, name: str, size: int, clientFilename: Optional[str],
                      details: Optional[Mapping[str, Any]] = None) -> UploadRecord:
        """
        Publish the upload C{upload} holds exclusively, under C{name}
        (already sanitized; a taken name gets a number).

        @param size: its length in bytes.
        @param clientFilename: the file name as the client sent it, for
            display only.
        @param details: protocol fields for the sidecar.
        @return: the complete record (at once if it was published already).
        @raise UploadError: a disk error, mapped as every disk error is.
        """
        record = self.store.get(upload.record.id)
        done = await self._settled(record)
        if done is not None:
            return done
        uploadId = record.id
        source = self.store.dataPath(uploadId)
        info: Dict[str, Any] = {
            "id": uploadId,
            "protocol": record.protocol,
            "subject": record.subject,
            "created": record.created,
            "size": size,
            "filename": name,
            "clientFilename": clientFilename,
            "metadata": record.metadata,
        }
        info.update(details or {})
        try:
            await self.store.update(uploadId, _announce(name))
            info["sha256"] = await self.hashes.finish(uploadId, source, size)
            info["completedAt"] = self.store.clock()
            target = await self.disk.run(self.completed.publish, source, name, info, self.store.durable)
            record = await self.store.update(uploadId, recordPublication(_publication(target, info)))
        except OSError as e:
            # One line for the operator (the client's answer names the step).
            self.log.error("publishing upload {uploadId} failed: {error}", uploadId=uploadId, error=str(e))
            raise diskError(e, "publishing the upload") from None
        self.log.info("{protocol} upload {uploadId} published as {name}: {size} bytes, sha256 {sha256}",
                      protocol=record.protocol, uploadId=uploadId, name=os.path.basename(target),
                      size=size, sha256=info["sha256"])
        return record

    async def adopt(self, record: UploadRecord) -> UploadRecord:
        """
        The record of an upload whose data file is gone: published (by
        another request or process, or by a publication cut short that
        this finishes), else L{UploadGone}.

        Another process may be publishing it right now: its record says
        where the file is going, the file has moved, and its sidecar is
        not written yet.  That is waited for (up to L{adoptWait} seconds,
        then 503: the client tries again), never answered as lost data.
        """
        waited = 0.0
        while True:
            done = await self._settled(record)
            if done is not None:
                return done
            if record.publishing is None:
                raise dataGone()
            if waited >= self.adoptWait:
                raise ServiceUnavailable("the upload is being published; try again")
            await deferLater(self.disk.reactor, self.adoptPoll, lambda: None)
            waited += self.adoptPoll
            record = self.store.get(record.id)

    async def _settled(self, record: UploadRecord) -> Optional[UploadRecord]:
        """
        The record of a publication already made -- recorded, or finished
        now from the sidecar of one cut short -- else C{None}.
        """
        if record.published is not None:
            return record
        if record.publishing is None:
            return None
        try:
            found = await self.disk.run(self.completed.findPublished, record.publishing,
                                        record.id, record.created)
            if found is None:
                return None
            target, info = found
            adopted = await self.store.update(record.id, recordPublication(_publication(target, info)))
        except OSError as e:
            raise diskError(e, "publishing the upload") from None
        self.log.info("upload {uploadId}: a publication cut short was finished from {name}",
                      uploadId=record.id, name=os.path.basename(target))
        return adopted


def _publication(target: str, info: Mapping[str, Any]) -> Publication:
    return Publication(path=target, name=os.path.basename(target), size=info["size"],
                       sha256=info["sha256"], completedAt=info["completedAt"])


def _announce(name: str) -> Any:
    def announcePublishing(record: UploadRecord) -> None:
        # If we are cut short after the move, this says where to look.
        record.publishing = name

    return announcePublishing


def recordPublication(publication: Publication) -> Any:
    """
    The record update that marks an upload published and complete.
    """

    def recordPublication(record: UploadRecord) -> None:
        record.published = publication
        record.publishing = None
        record.length = publication.size
        record.state = COMPLETE  # the store announces post-finish
        record.expires = None

    return recordPublication

