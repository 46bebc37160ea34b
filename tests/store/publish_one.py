"""Run as a separate process by the store tests: publish one artifact and report how it went.

    python publish_one.py STORE_URL NAME SIZE_BYTES START_AT [--die-after-write]

Waits until wall-clock time START_AT (so that racing processes start together), then
publishes NAME with one file of SIZE_BYTES whose bytes all equal a value of its own.
Prints ``won <artifact-id> <byte>`` or ``busy``. With --die-after-write it SIGKILLs
itself after writing its files, before publishing (crash debris).
"""

import os
import signal
import sys
import time
from pathlib import Path

from thaw.errors import BusyError
from thaw.store import open_store
from thaw.model.manifest import Manifest, SourceInfo, WorkerInfo

url, name, size, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
die = "--die-after-write" in sys.argv
scratch = os.environ.get("SCRATCH_DIR") or Path(os.environ.get("SCRATCH", "/tmp")) / f"scratch-{os.getpid()}"
store = open_store(url, scratch=Path(scratch))
byte = os.getpid() % 251 + 1
while time.time() < start_at:
    time.sleep(0.001)
try:
    with store.stage(name) as staged:
        (staged.dir / "images").mkdir()
        with open(staged.dir / "images" / "pages.img", "wb") as f:
            block = bytes([byte]) * (1 << 20)
            f.writelines(block for _ in range(size >> 20))
            f.write(bytes([byte]) * (size & ((1 << 20) - 1)))
        if die:
            os.kill(os.getpid(), signal.SIGKILL)
        staged.published = Manifest(artifact_id="", name=name, source=SourceInfo(host="p", kernel="k"),
                                    worker=WorkerInfo(name=f"pub-{os.getpid()}"))
    print("won", staged.published.artifact_id, byte, flush=True)
except BusyError:
    print("busy", flush=True)
