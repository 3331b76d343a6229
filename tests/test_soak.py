"""
A few cycles of the kill -9 soak (bench/soak.py), as a real process: chunkd
is SIGKILLed at random moments and restarted while tus, Resumable.js and
facade clients upload and resume; every offset or chunk the server reports
is checked against the source and the file, and every completed file's
sha256.  The long run's figures are in bench/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from tests.helpers import ROOT


class SoakTests(unittest.TestCase):
    def test_killedAndRestartedChunkdLosesAndInventsNothing(self) -> None:
        summary = os.path.join(tempfile.mkdtemp(prefix="chunkd-soak-test-"), "summary.json")
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "soak.py"), "--cycles", "4", "--seed", "11",
             "--clients", "1", "--max-size", "3MiB", "--min-run", "0.3", "--max-run", "1.2",
             "--json", summary],
            cwd=ROOT, capture_output=True, timeout=240)
        output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        self.assertEqual(result.returncode, 0, output[-4000:])
        with open(summary) as f:
            figures = json.load(f)
        os.unlink(summary)
        os.rmdir(os.path.dirname(summary))
        self.assertGreaterEqual(figures["kills"], 4)
        self.assertEqual((figures["nonDurableReports"], figures["corruptFiles"]), (0, 0), figures["violations"])
        self.assertEqual(figures["hungClients"], [])
        self.assertEqual(figures["logTracebacks"], 0)
        for protocol in ("tus", "resumable", "facade"):
            self.assertGreater(figures["completed"][protocol], 0, protocol)
        self.assertGreater(figures["checks"], 0)
