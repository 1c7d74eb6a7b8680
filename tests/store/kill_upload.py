"""Run a builder's CLI and SIGKILL it while it uploads a named object to the store (fault tests).

``python -m tests.store.kill_upload REL WHEN builders.real ARGS...``

``WHEN`` is ``mid``: the upload of ``REL`` (a path under the output URL) is begun as a multipart
upload whose first part is sent, then the process is killed before the upload completes, as a
kill during a large shard's upload would leave it; or ``after``: killed just after ``REL`` was
put, before the next object (a tar whose stats never follow).
"""
from __future__ import annotations

import os
import runpy
import signal
import sys

from wds_tools.remote_output import Store

PART = 5 * 2**20  # S3's smallest multipart part


def main() -> None:
    rel, when, module, *args = sys.argv[1:]
    upload = Store.upload

    def upload_then_maybe_die(self, local, name):
        if name == rel and when == "mid":
            data = local.read_bytes()
            f = self.fs.open(self.key(name), "wb", block_size=PART)
            f.write(data * (PART // max(len(data), 1) + 1))
            f.flush()  # the first part is on the server; the upload is not completed
            os.kill(os.getpid(), signal.SIGKILL)
        upload(self, local, name)
        if name == rel and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    Store.upload = upload_then_maybe_die
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__")


if __name__ == "__main__":
    main()
