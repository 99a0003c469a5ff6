"""nnbox.blas: OpenBLAS told to re-read OPENBLAS_THREAD_TIMEOUT when NumPy was imported before nnbox."""
import os
import subprocess
import sys

import pytest

from nnbox import blas

SPIN_PROBE = r"""
import os, sys, time
import numpy as np                         # NumPy, hence OpenBLAS, before nnbox
{before}
def cpu_seconds(tid):
    fields = open(f"/proc/self/task/{{tid}}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
a = np.ones((1024, 1024), np.float32)
a @ a                                     # starts OpenBLAS's threads
workers = [t for t in os.listdir("/proc/self/task") if t != str(os.getpid())]
spent = 0.0
for _ in range(3):
    a @ a
    start = {{t: cpu_seconds(t) for t in workers}}
    time.sleep(0.2)
    spent += sum(cpu_seconds(t) - start[t] for t in workers)
print(spent)
"""


@pytest.mark.skipif(blas._library() is None, reason="NumPy's BLAS here is not an OpenBLAS nnbox can find")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts no threads on one usable CPU")
def test_importing_nnbox_after_numpy_stops_openblas_threads_spinning():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when NumPy loads it; imported after NumPy, nnbox makes
    it read the variable again (blas.reread_environment). Its threads then sleep right after a
    product instead of spinning ~0.1 s. The reference probe without nnbox must show the spinning
    first: where it does not (a busy machine or a CPU quota gives the spinning threads no time), the
    test skips, since it could not tell a regression from its absence."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def worker_seconds(before):
        result = subprocess.run([sys.executable, "-c", SPIN_PROBE.format(before=before)], env=env,
                                capture_output=True, text=True, timeout=120, check=True)
        return float(result.stdout.strip())

    # the probe without nnbox: OpenBLAS's default timeout keeps its threads busy after each product
    reference = worker_seconds("")
    if reference <= 0.1:
        pytest.skip(f"OpenBLAS's threads did not spin here without nnbox ({reference:.2f} s of CPU in 0.6 s of "
                    f"sleep): nothing to compare with")
    assert worker_seconds("import nnbox") < 0.05          # three products, 0.6 s of sleep
