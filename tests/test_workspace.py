"""nnbox.workspace: recycled arrays are handed out again only when nothing references them.

Also the GAN pattern that would expose an aliasing bug: D runs forward on the real batch, then on
the fake batch, before either backward (the trainer keeps the real pass's saved arrays aside), and
several steps reuse the same memory; results must equal those with recycling off, bit for bit.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from gan.models import build_gan
from gan.trainer import _restore_saved_state, _saved_state
from nnbox import workspace
from nnbox.optim import Adam


@pytest.fixture
def recycle_everything(monkeypatch):
    """Recycle arrays of any size (the tests' arrays are small)."""
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    previous = workspace.set_enabled(True)
    workspace.clear()
    yield
    workspace.clear()
    workspace.set_enabled(previous)


def test_an_array_in_use_is_never_handed_out_again(recycle_everything):
    a = workspace.empty((4, 5), np.float32)
    b = workspace.empty((4, 5), np.float32)
    assert not np.shares_memory(a, b)
    view = a[1:]          # a view keeps its base alive
    del a
    c = workspace.empty((20,), np.float32)
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)


def test_an_unreferenced_array_is_recycled_with_any_shape(recycle_everything):
    a = workspace.empty((4, 5), np.float32)
    address = a.__array_interface__["data"][0]
    del a
    b = workspace.empty((2, 10), np.float32)
    assert b.shape == (2, 10) and b.__array_interface__["data"][0] == address
    assert workspace.empty((2, 10), np.float64).dtype == np.float64   # another dtype: another bucket


def test_small_disabled_and_bounded(monkeypatch):
    monkeypatch.setattr(workspace, "MIN_BYTES", 1024)
    workspace.clear()
    small = workspace.empty((4,), np.float32)
    assert workspace.kept_bytes() == 0 and small.shape == (4,)
    previous = workspace.set_enabled(False)
    try:
        workspace.empty((1024,), np.float32)
        assert workspace.kept_bytes() == 0
    finally:
        workspace.set_enabled(previous)
    held = [workspace.empty((1024,), np.float32) for _ in range(workspace.MAX_PER_SIZE + 2)]
    assert workspace.kept_bytes() == workspace.MAX_PER_SIZE * 4096 and len(held) == workspace.MAX_PER_SIZE + 2
    zeros = workspace.zeros((1024,), np.float32)
    assert not zeros.any()
    workspace.clear()


def _gan_steps(steps=3):
    """A few D and G steps of a small DCGAN the trainer's way; returns every weight and output."""
    G, D = build_gan("dcgan", image_size=32, width=4, rng=0)
    opt_g, opt_d = Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999)), Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    rng = np.random.default_rng(1)
    outputs = []
    for _ in range(steps):
        real = rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
        fake = G(rng.standard_normal((4, 100)).astype(np.float32))
        real_logits = D(real)
        real_pass = _saved_state(D)
        fake_logits = D(fake)
        D.zero_grad()
        D.backward(np.full_like(fake_logits, 0.25))
        _restore_saved_state(real_pass)
        D.backward(np.full_like(real_logits, -0.25))
        opt_d.step()
        D.requires_grad_(False)
        g_logits = D(fake)
        G.zero_grad()
        G.backward(D.backward(np.full_like(g_logits, -0.25)))
        opt_g.step()
        D.requires_grad_(True)
        outputs += [real_logits.copy(), fake_logits.copy(), g_logits.copy()]
    return outputs + [p.data.copy() for p in G.parameters() + D.parameters()]


def test_gan_steps_identical_with_recycling_on_and_off(recycle_everything):
    recycled = _gan_steps()
    assert workspace.kept_bytes() > 0
    workspace.set_enabled(False)
    fresh = _gan_steps()
    for a, b in zip(recycled, fresh):
        np.testing.assert_array_equal(a, b)


def _glibc():
    import platform
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


# Made, freed and made again: 4 arrays of 24 MiB (under MIN_BYTES), five times; prints this thread's
# page faults. In a fresh process, so that what earlier tests left on the heap cannot change the count.
_CHURN = """
import resource
import numpy as np
import nnbox  # noqa: F401  (its import tunes malloc unless NNBOX_MALLOC_TUNING=0)

def churn():
    arrays = [np.ones(6 << 20, np.float32) for _ in range(4)]
    del arrays                                  # 96 MiB freed at once

churn()                                         # the heap grows once
before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
for _ in range(5):
    churn()
print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
"""


def _churn_faults(tuning):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NNBOX_MALLOC_TUNING="1" if tuning else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _CHURN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not _glibc(), reason="malloc tuning applies to glibc only")
def test_tuned_malloc_reuses_freed_pages():
    """After tune_malloc (nnbox's import runs it), a step's worth of temporaries under MIN_BYTES, freed
    together and made again, reuse the heap's pages: no page faults. Untuned glibc returns the freed
    top of its heap to the OS and faults the pages in afresh (10,000-13,000 faults here). Measured in
    fresh processes: in the test process, what earlier tests left on the heap changed the count (7,855
    faults once, in a CI run)."""
    tuned, untuned = _churn_faults(True), _churn_faults(False)
    assert tuned < 1000, f"{tuned} page faults for arrays made again in freed heap memory"
    assert untuned > 5000, f"only {untuned} page faults without the tuning: the test no longer shows its effect"


def test_malloc_tuning_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("NNBOX_MALLOC_TUNING", "0")
    assert workspace.tune_malloc() is False
