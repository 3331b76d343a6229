"""
The twistd plugin: C{twistd -n chunkd}.  Lazy, so listing plugins does not
import chunkd.
"""

from twisted.application.service import ServiceMaker

chunkd = ServiceMaker(
    "chunkd",
    "chunkd.tap",
    "A resumable-upload daemon: tus 1.0.0, Resumable.js and flow.js, streamed to disk.",
    "chunkd",
)
