"""gan.torch_weights (the restricted .pth reader) and gan.inception (FID's Inception-v3 in nnbox layers).

The parity test builds pytorch-fid's network in torch (written out below, block for block, from
pytorch_fid/inception.py and torchvision's Inception3), fills it with random weights, saves its
state dict with torch.save, reads that file with nnbox's reader (no torch involved) and compares the
2048-dim features.
"""
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from gan.torch_weights import UnsafeTorchFileError, load_torch_state_dict


# --------------------------------------------------------------------------- the safe reader
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_round_trips_a_torch_state_dict(torch, tmp_path, zip_format):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    state = net.state_dict()
    state["transposed"] = torch.arange(12.0).reshape(3, 4).t()      # a non-contiguous view
    state["slice"] = torch.arange(10, dtype=torch.float64)[3:8]      # an offset into a shared storage
    state["half"] = torch.randn(3).half()
    state["bf16"] = torch.randn(4).bfloat16()
    state["flags"] = torch.tensor([True, False])
    path = tmp_path / "w.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_torch_state_dict(path)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert loaded[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
    assert loaded["1.num_batches_tracked"].dtype == np.int64


class _RunsCode:
    """Pickles as a call of os.system: the classic malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _zip_with_pickle(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


def test_reader_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsCode(marker)}, protocol=2)
    # the payload really is dangerous: the ordinary unpickler would run it
    assert b"system" in payload
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, payload)
    with pytest.raises(UnsafeTorchFileError, match="refusing to load (posix|os|nt).system"):
        load_torch_state_dict(path)
    assert not marker.exists()
    # the legacy layout goes through the same unpickler
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(payload)
    with pytest.raises(UnsafeTorchFileError, match="refusing"):
        load_torch_state_dict(legacy)
    assert not marker.exists()


def _text(value):
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _small_int(value):
    return b"K" + bytes([value])


def _forged_tensor_pickle(numel, offset, size, stride):
    """A protocol-2 pickle of {"w": _rebuild_tensor_v2(<FloatStorage "0" of numel>, offset, size, stride, ...)},
    written opcode by opcode (no torch needed to make it)."""
    storage_id = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu")
                  + _small_int(numel) + b"tQ")                                   # MARK ... TUPLE BINPERSID
    ints = lambda values: b"(" + b"".join(_small_int(v) for v in values) + b"t"  # noqa: E731
    call = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_id + _small_int(offset) + ints(size) + ints(stride)
            + b"\x89}tR")                                                        # False, {}, TUPLE, REDUCE
    return b"\x80\x02}" + _text("w") + call + b"s."                              # {w: ...} STOP


def test_reader_refuses_other_globals_and_forged_views(tmp_path):
    path = tmp_path / "eval.pth"
    _zip_with_pickle(path, pickle.dumps({"f": eval}))
    with pytest.raises(UnsafeTorchFileError, match="builtins.eval"):
        load_torch_state_dict(path)

    def archive(name, payload, storage_bytes):
        with zipfile.ZipFile(tmp_path / name, "w") as out:
            out.writestr("archive/data.pkl", payload)
            out.writestr("archive/data/0", storage_bytes)
        return tmp_path / name

    data = np.arange(4, dtype=np.float32).tobytes()
    # the hand-made pickle is what torch writes: a valid view loads
    good = load_torch_state_dict(archive("good.pth", _forged_tensor_pickle(4, 1, (2,), (2,)), data))
    np.testing.assert_array_equal(good["w"], [1.0, 3.0])
    # a view that reaches past its storage (as_strided would read foreign memory) is refused
    forged = archive("forged.pth", _forged_tensor_pickle(4, 0, (10,), (1,)), data)
    with pytest.raises(UnsafeTorchFileError, match="reaches element 9 of a storage of 4"):
        load_torch_state_dict(forged)
    # a storage file shorter than the pickle claims is refused
    short = archive("short.pth", _forged_tensor_pickle(4, 0, (4,), (1,)), data[:8])
    with pytest.raises(UnsafeTorchFileError, match="holds 8 bytes, 16 expected"):
        load_torch_state_dict(short)


def test_reader_errors_for_missing_and_non_torch_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such PyTorch weights file"):
        load_torch_state_dict(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable torch.save file"):
        load_torch_state_dict(junk)
