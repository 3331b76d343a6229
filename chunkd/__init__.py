"""
chunkd: a resumable-upload daemon on Twisted (tus 1.0.0, Resumable.js,
flow.js and a chunked-upload facade), streaming bodies straight into
preallocated files.  C{twistd -n chunkd} runs it; L{chunkd.tap} wires it.
"""

__version__ = "0.1.0"
