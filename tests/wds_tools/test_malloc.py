import subprocess
import sys
import textwrap

import pytest

from wds_tools.malloc import MAX_MMAP_THRESHOLD, keep_freed_memory

# Allocate and free a few image-sized buffers per step, as a decode-and-augment loop does, and
# count the process's minor page faults: without tuning, glibc gives the freed heap top back
# to the kernel (it exceeds the trim threshold) and faults fresh pages in at every step.
PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    if {tune}:
        from wds_tools.malloc import keep_freed_memory
        assert keep_freed_memory()
    def step():
        bufs = [np.ones((512, 512, 3), np.float32) for _ in range(3)]  # 3 MiB each, filled
        return sum(float(b[0, 0, 0]) for b in bufs)
    for _ in range(5):  # settle glibc's dynamic thresholds first
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(tune: bool) -> int:
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=root, tune=tune)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_buffers_are_reused_without_new_page_faults():
    if not keep_freed_memory():
        pytest.skip("no glibc mallopt here")
    plain, tuned = _faults(False), _faults(True)
    assert plain > 50_000  # ~770 fresh 4 KiB pages per buffer and step
    assert tuned < plain / 20, (plain, tuned)


def test_threshold_out_of_range_is_a_value_error(monkeypatch):
    import wds_tools.malloc as m

    monkeypatch.setattr(m, "_done", None)
    with pytest.raises(ValueError, match=str(MAX_MMAP_THRESHOLD + 1)):
        m.keep_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
