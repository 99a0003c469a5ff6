"""Serialization: round trips, atomic writes, no pickle, clear errors on bad files."""
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from layers import Linear
from nnbox import backend, serialization
from nnbox.module import Sequential
from nnbox.optim import Adam
from nnbox.serialization import (SerializationError, load_checkpoint, load_npy, load_state, save_checkpoint,
                                 save_state)


def test_state_round_trip(tmp_path, rng):
    model = Sequential(Linear(3, 4, rng=rng), Linear(4, 2, rng=rng))
    path = tmp_path / "model.npz"
    save_state(path, model.state_dict())
    loaded = load_state(path)
    assert list(loaded) == list(model.state_dict())
    other = Sequential(Linear(3, 4, rng=1), Linear(4, 2, rng=1))
    other.load_state_dict(loaded)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype


def test_state_numbers_come_back_as_zero_d_arrays(tmp_path):
    path = tmp_path / "numbers.npz"
    save_state(path, {"step": 3, "lr": 0.5, "flag": True, "big": np.int64(2**62)})
    loaded = load_state(path)
    assert loaded["step"].shape == () and int(loaded["step"]) == 3
    assert float(loaded["lr"]) == 0.5 and bool(loaded["flag"]) is True and int(loaded["big"]) == 2**62


def test_path_is_used_as_given(tmp_path):
    path = tmp_path / "weights.bin"
    save_state(str(path), {"w": np.ones(2)})
    assert path.exists() and not (tmp_path / "weights.bin.npz").exists()
    np.testing.assert_array_equal(load_state(str(path))["w"], np.ones(2))


def test_checkpoint_round_trip_of_a_whole_run(tmp_path, rng):
    generator = Linear(3, 4, rng=rng)
    optimizer = Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    generator.weight.grad += 1.0
    optimizer.step()
    numpy_rng = np.random.default_rng(12345)
    numpy_rng.standard_normal(7)
    rng_state = numpy_rng.bit_generator.state
    assert rng_state["state"]["state"] > 2**64  # PCG64's state is a 128-bit integer
    history = {"d_loss": [0.5, 0.25, float("inf")], "step": [1, 2, 3], "notes": ["a", "b"]}
    config = {"arch": "faces", "lr": 2e-4, "betas": (0.5, 0.999), "data_dir": None, "flip": False,
              "nested": {"empty": {}, "list_of_lists": [[1, 2], []]}}

    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, generator=generator.state_dict(), opt_g=optimizer.state_dict(), rng=rng_state,
                    history=history, config=config, epoch=np.int64(4), arrays=[np.arange(3), np.eye(2)])
    loaded = load_checkpoint(path)

    assert list(loaded) == ["generator", "opt_g", "rng", "history", "config", "epoch", "arrays"]
    for name, array in generator.state_dict().items():
        np.testing.assert_array_equal(loaded["generator"][name], array)
        assert loaded["generator"][name].dtype == array.dtype
    assert loaded["rng"] == rng_state
    assert loaded["history"] == history
    assert loaded["config"] == {**config, "betas": [0.5, 0.999]}  # tuples come back as lists
    assert loaded["epoch"] == 4 and type(loaded["epoch"]) is int
    np.testing.assert_array_equal(loaded["arrays"][0], np.arange(3))
    np.testing.assert_array_equal(loaded["arrays"][1], np.eye(2))

    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = loaded["rng"]
    np.testing.assert_array_equal(resumed_rng.standard_normal(5), numpy_rng.standard_normal(5))

    resumed = Adam(Linear(3, 4, rng=0).parameters())
    resumed.load_state_dict(loaded["opt_g"])
    assert resumed.betas == (0.5, 0.999) and resumed.state[0]["step"] == 1
    np.testing.assert_array_equal(resumed.state[0]["exp_avg"], optimizer.state[0]["exp_avg"])


def test_checkpoint_arrays_are_named_by_path(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, generator={"conv1.weight": np.ones(2)})
    with np.load(path, allow_pickle=False) as npz:
        assert "generator/conv1.weight" in npz.files


def test_checkpoint_refuses_what_it_cannot_store(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(TypeError, match=r"keys must be strings.*1"):
        save_checkpoint(path, history={1: [0.5]})
    with pytest.raises(TypeError, match=r"cannot store object at 'config/thing'"):
        save_checkpoint(path, config={"thing": object()})
    with pytest.raises(TypeError, match="object arrays would need pickle"):
        save_checkpoint(path, config={"bad": np.array([{}, None], dtype=object)})
    with pytest.raises(ValueError, match=r"two arrays would be stored as 'a/b'"):
        save_checkpoint(path, a={"b": np.ones(1)}, **{"a/b": np.ones(1)})
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_save_state_refuses_object_arrays(tmp_path):
    with pytest.raises(TypeError, match=r"'w'.*object arrays would need pickle"):
        save_state(tmp_path / "s.npz", {"w": np.array([1, "a"], dtype=object)})


def test_a_file_with_an_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, weight=np.ones(2), payload=np.array([{"x": 1}], dtype=object))  # pickled inside
    with pytest.raises(SerializationError, match=r"evil\.npz.*'payload'.*object array"):
        load_state(path)
    with pytest.raises(SerializationError, match=r"evil\.npz"):
        load_checkpoint(path)


def test_a_pickle_file_is_refused(tmp_path):
    path = tmp_path / "model.pkl"
    np.array([1, None], dtype=object).dump(path)  # an .npy-less pickle
    with pytest.raises(SerializationError, match=r"model\.pkl"):
        load_state(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "npy"])
def test_corrupt_files_raise_a_clear_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, generator={"w": np.arange(1000.0)}, history={"loss": [1.0]})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.save(open(path, "wb"), np.ones(3))
    with pytest.raises(SerializationError, match=r"checkpoint\.npz"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"not a zip file at all", b"", pickle.dumps([1, 2])])
def test_a_file_numpy_would_unpickle_is_refused_without_advice_to_load_it_unsafely(tmp_path, content):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(content)
    with pytest.raises(SerializationError, match=r"cannot read .*checkpoint\.npz.*corrupt") as caught:
        load_checkpoint(path)
    assert "allow_pickle" not in str(caught.value) and "pickle.load" not in str(caught.value)


def test_corrupt_member_data_is_detected(tmp_path):
    path = tmp_path / "state.npz"
    save_state(path, {"w": np.arange(1000.0)})
    data = bytearray(path.read_bytes())
    middle = data.find(np.arange(1000.0).tobytes()[800:816])
    assert middle > 0
    data[middle:middle + 8] = b"\xff" * 8  # flip bytes inside the stored array: the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(SerializationError, match=r"state\.npz.*corrupt"):
        load_state(path)


def _npz(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, raw in entries.items():
            archive.writestr(name, raw)
    return path


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _checkpoint_with_description(tmp_path, text):
    return _npz(tmp_path / "forged.npz", {f"{serialization.CHECKPOINT_ENTRY}.npy": _npy_bytes(np.array(text))})


def test_forged_files_get_the_serialization_error_not_a_crash(tmp_path, monkeypatch):
    # a header asking for 8 TB over 64 bytes of data gave a bare MemoryError. The failed allocation
    # is simulated: a real one that large leaves glibc's heap changed for the rest of the process
    # (test_workspace measures its page reuse)
    import numpy.lib._npyio_impl as npyio

    def out_of_memory(stream, **options):
        raise MemoryError("Unable to allocate 7.28 TiB for an array with shape (1000000000000,)")
    monkeypatch.setattr(npyio.format, "read_array", out_of_memory)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    huge = _npz(tmp_path / "huge.npz", {"w.npy": header.getvalue() + bytes(64)})
    with pytest.raises(SerializationError, match="huge.npz'.*asks for more memory than is available"):
        load_state(huge)
    monkeypatch.undo()
    # a description nested 10^5 deep: a bare RecursionError before
    deep = '{"format": "nnbox-checkpoint", "version": 1, "tree": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(SerializationError, match="entry is corrupt"):
        load_checkpoint(_checkpoint_with_description(tmp_path, deep))
    # an array mark that is not a name: TypeError (unhashable list) before
    mark = json.dumps({"format": "nnbox-checkpoint", "version": 1, "tree": {"g": {"__nnbox_array__": ["x"]}}})
    with pytest.raises(SerializationError, match=r"refers to a missing array \['x'\]"):
        load_checkpoint(_checkpoint_with_description(tmp_path, mark))


def test_an_entry_declaring_a_huge_unpacked_size_is_refused_before_it_is_read(tmp_path, monkeypatch):
    # a real 1 TiB deflate bomb is a 1 GB file: the size declared in the central directory (which zipfile
    # writes from `filelist` on closing) is forged instead
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("w.npy", _npy_bytes(np.zeros(1000)))
        archive.filelist[0].file_size = 2**40
    import numpy.lib._npyio_impl as npyio
    read = []
    monkeypatch.setattr(npyio.format, "read_array", lambda *args, **kwargs: read.append(args))
    with pytest.raises(SerializationError, match=rf"bomb\.npz'.* declare {2**40} unpacked bytes .*'w\.npy'.*more "
                                                 rf"than the {serialization.MAX_NPZ_BYTES} allowed.*max_bytes="):
        load_checkpoint(path)
    assert read == []


def test_the_unpacked_size_limit_counts_every_entry_and_is_generous_by_default(tmp_path):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, a=np.zeros(7000), b=np.zeros(7500))    # 56,128 + 60,128 bytes in a 1 kB file
    assert path.stat().st_size < 2000
    with pytest.raises(SerializationError, match=r"zeros\.npz'.* declare 116256 unpacked bytes in all "
                                                 r".*'b\.npy', 60128\).*than the 100000 allowed"):
        load_state(path, max_bytes=100_000)
    assert list(load_state(path, max_bytes=116_256)) == ["a", "b"]
    np.testing.assert_array_equal(load_state(path)["b"], np.zeros(7500))


def test_entries_compressed_other_than_by_deflate_are_refused(tmp_path):
    path = tmp_path / "bz2.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("w.npy", _npy_bytes(np.zeros(10)))
    with pytest.raises(SerializationError, match=r"bz2\.npz'.*'w\.npy' is compressed with method 12.*stored or "
                                                 r"deflated"):
        load_state(path)


def test_load_state_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "state.npz"
    save_state(path, {"w": np.ones(2)})
    with pytest.raises(SerializationError, match=r"not an nnbox checkpoint.*load_state"):
        load_checkpoint(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_state(tmp_path / "nothing.npz")


def test_load_npy_reads_an_array_and_names_a_missing_file(tmp_path):
    np.save(tmp_path / "images.npy", np.arange(6, dtype=np.uint8).reshape(2, 3))
    np.testing.assert_array_equal(load_npy(tmp_path / "images.npy"), np.arange(6).reshape(2, 3))
    with pytest.raises(FileNotFoundError, match="nothing.npy"):
        load_npy(tmp_path / "nothing.npy")


def _write_damaged_npy(path, damage):
    """`path` holding something other than a plain .npy array, as `damage` names."""
    good = np.arange(240, dtype=np.uint8).reshape(2, 3, 40)
    with open(path, "wb") as f:
        if damage == "npz":
            np.savez(f, images=good)
        elif damage == "object":
            np.save(f, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
        elif damage == "forged":    # a header declaring 10^18 bytes
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (10**9,) * 2})
        else:
            np.save(f, good)
    data = path.read_bytes()
    if damage in ("empty", "truncated", "header"):
        path.write_bytes({"empty": b"", "truncated": data[:-7], "header": data[:30]}[damage])
    elif damage == "pickle":
        path.write_bytes(pickle.dumps([1, 2]))


@pytest.mark.parametrize("damage, found", [
    ("npz", r"is an \.npz archive of 1 named array\(s\), not the single \.npy array expected"),
    ("object", r"holds an object array, which only pickle could load"),
    ("empty", r"the file is empty"),
    ("truncated", r"the file is truncated or corrupt"),
    ("header", r"the file is truncated or corrupt"),
    ("pickle", r"starts like neither a zip archive nor an \.npy array"),
    ("forged", r"its header asks for more memory than is available"),
])
def test_load_npy_says_what_the_file_holds_instead(tmp_path, damage, found):
    path = tmp_path / "images.npy"
    _write_damaged_npy(path, damage)
    with pytest.raises(SerializationError, match=rf"images\.npy.*{found}") as caught:
        load_npy(path)
    assert "allow_pickle=" not in str(caught.value)


def test_a_failure_mid_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, generator={"w": np.ones(3)}, epoch=1)
    before = path.read_bytes()

    real_write_array = np.lib.format.write_array
    written = []

    def write_one_entry_then_crash(entry, array, **kwargs):
        if written:     # the first entry is in the file when the "crash" comes
            raise OSError("disk full")
        written.append(real_write_array(entry, array, **kwargs))

    monkeypatch.setattr(np.lib.format, "write_array", write_one_entry_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, generator={"w": np.zeros(3)}, epoch=2)
    assert written and path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no temporary file left behind
    monkeypatch.setattr(np.lib.format, "write_array", real_write_array)
    assert load_checkpoint(path)["epoch"] == 1


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    save_state(path, {"w": np.ones(3)})
    replaced = []

    def failing_replace(source, target):
        replaced.append((source, target))
        assert os.path.dirname(os.path.abspath(source)) == str(tmp_path)  # same folder: rename is atomic
        zipfile.ZipFile(source).testzip()  # the temporary is complete before the rename
        raise OSError("rename failed")

    monkeypatch.setattr(serialization.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_state(path, {"w": np.zeros(3)})
    assert replaced and replaced[0][1] == str(path)
    np.testing.assert_array_equal(load_state(path)["w"], np.ones(3))
    assert os.listdir(tmp_path) == ["state.npz"]


def test_entries_may_have_any_name(tmp_path):
    # np.savez(file, **arrays) would take these for its own arguments
    state = {"file": np.ones(2), "allow_pickle": np.zeros(3), "args": np.arange(4)}
    save_state(tmp_path / "s.npz", state)
    loaded = load_state(tmp_path / "s.npz")
    assert list(loaded) == list(state)
    for name, array in state.items():
        np.testing.assert_array_equal(loaded[name], array)
    save_checkpoint(tmp_path / "c.npz", file=np.ones(2), allow_pickle={"x": 1})
    checkpoint = load_checkpoint(tmp_path / "c.npz")
    np.testing.assert_array_equal(checkpoint["file"], np.ones(2))
    assert checkpoint["allow_pickle"] == {"x": 1}


def test_files_get_the_permissions_open_would_give(tmp_path):
    path = tmp_path / "s.npz"
    previous = os.umask(0o022)
    try:
        save_state(path, {"w": np.ones(1)})
        assert path.stat().st_mode & 0o777 == 0o644          # not mkstemp's 0o600
        os.chmod(path, 0o640)
        save_state(path, {"w": np.zeros(1)})
        assert path.stat().st_mode & 0o777 == 0o640          # a replaced file keeps its mode
    finally:
        os.umask(previous)


def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the folder .*no_such_dir' does not exist"):
        save_state(tmp_path / "no_such_dir" / "s.npz", {"w": np.ones(1)})


def test_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(serialization.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(serialization.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    save_state(tmp_path / "s.npz", {"w": np.ones(3)})
    assert calls.index("fsync") < calls.index("replace")


def test_module_of_another_architecture_fails_naming_the_key(tmp_path, rng):
    path = tmp_path / "model.npz"
    save_state(path, Sequential(Linear(3, 4, rng=rng), Linear(4, 2, rng=rng)).state_dict())
    with pytest.raises(ValueError, match=r"'1\.weight'.*\(3, 4\).*\(2, 4\)"):
        Sequential(Linear(3, 4, rng=rng), Linear(4, 3, rng=rng)).load_state_dict(load_state(path))
    with pytest.raises(KeyError, match=r"1\.bias"):
        Sequential(Linear(3, 4, rng=rng), Linear(4, 2, bias=False, rng=rng)).load_state_dict(load_state(path))


@pytest.mark.gpu
def test_gpu_arrays_are_saved_to_the_cpu(tmp_path, rng):
    model = Linear(3, 4, rng=rng).to("gpu")
    path = tmp_path / "gpu.npz"
    save_checkpoint(path, generator=model.state_dict())
    save_state(tmp_path / "gpu_state.npz", model.state_dict())
    loaded = load_checkpoint(path)["generator"]
    assert all(isinstance(array, np.ndarray) for array in loaded.values())
    np.testing.assert_array_equal(loaded["weight"], backend.to_numpy(model.weight.data))
    fresh = Linear(3, 4, rng=1).to("gpu")
    fresh.load_state_dict(load_state(tmp_path / "gpu_state.npz"))
    assert backend.device_of(fresh.weight.data) == "gpu"
