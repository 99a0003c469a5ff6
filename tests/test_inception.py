"""gan.torch_weights (the restricted .pth reader) and gan.inception (FID's Inception-v3 in nnbox layers).

The parity test builds pytorch-fid's network in torch (written out below, block for block, from
pytorch_fid/inception.py and torchvision's Inception3), fills it with random weights, saves its
state dict with torch.save, reads that file with nnbox's reader (no torch involved) and compares the
2048-dim features.
"""
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
    forged = archive("forged.pth", _forged_tensor_pickle(4, 1, (3,), (2,)), data)
    with pytest.raises(UnsafeTorchFileError, match="reaches element 5 of a storage of 4"):
        load_torch_state_dict(forged)
    # so is one that repeats its storage's elements (stride 0): a tiny file could ask for any memory
    repeated = archive("repeated.pth", _forged_tensor_pickle(4, 0, (255, 255, 255), (0, 0, 0)), data)
    with pytest.raises(UnsafeTorchFileError, match=r"size \(255, 255, 255\) has more elements than its storage"):
        load_torch_state_dict(repeated)
    # a storage file shorter than the pickle claims is refused
    short = archive("short.pth", _forged_tensor_pickle(4, 0, (4,), (1,)), data[:8])
    with pytest.raises(UnsafeTorchFileError, match="holds 8 bytes, 16 expected"):
        load_torch_state_dict(short)


def test_a_forged_file_cannot_change_how_later_files_load(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD {"name": "BFloat16Storage"}: the shared stand-in was
    # changed for the rest of the process, and every later float32 tensor read as bfloat16
    data = np.array([1.5, -2.0, 3.25, 0.0], np.float32).tobytes()
    with zipfile.ZipFile(tmp_path / "good.pth", "w") as out:
        out.writestr("archive/data.pkl", _forged_tensor_pickle(4, 0, (3,), (1,)))
        out.writestr("archive/data/0", data)
    poison = b"\x80\x02ctorch\nFloatStorage\n}" + _text("name") + _text("BFloat16Storage") + b"sb0}."
    for target in (b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n"):
        _zip_with_pickle(tmp_path / "poison.pth", poison.replace(b"ctorch\nFloatStorage\n", target))
        with pytest.raises(UnsafeTorchFileError, match="never sets the state of torch"):
            load_torch_state_dict(tmp_path / "poison.pth")
    np.testing.assert_array_equal(load_torch_state_dict(tmp_path / "good.pth")["w"], [1.5, -2.0, 3.25])


def test_a_tensor_the_pickle_names_many_times_is_read_once(tmp_path):
    # {"a": t, "b": t} through the pickle's memo: one array, not one copy per reference (a small
    # file naming one large tensor thousands of times would otherwise multiply it)
    call = _forged_tensor_pickle(4, 0, (4,), (1,))[len(b"\x80\x02}") + len(_text("w")):-len(b"s.")]
    payload = b"\x80\x02}(" + _text("a") + call + b"q\x00" + _text("b") + b"h\x00u."   # BINPUT 0, BINGET 0
    with zipfile.ZipFile(tmp_path / "shared.pth", "w") as out:
        out.writestr("archive/data.pkl", payload)
        out.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    state = load_torch_state_dict(tmp_path / "shared.pth")
    assert state["a"] is state["b"] and state["a"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_reader_refuses_members_that_declare_too_many_bytes(tmp_path):
    # a deflated member inflates a thousandfold: the declared sizes are checked before any is read
    data = np.arange(4, dtype=np.float32).tobytes()
    path = tmp_path / "big_storage.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("archive/data.pkl", _forged_tensor_pickle(4, 0, (4,), (1,)))
        out.writestr("archive/data/0", data)
        out.writestr("archive/data/1", bytes(2**20))     # 1 MiB of zeros, about 1 KiB compressed
    assert path.stat().st_size < 8192
    with pytest.raises(UnsafeTorchFileError, match=r"declare \d+ unpacked bytes in all.*load_torch_state_dict"):
        load_torch_state_dict(path, max_bytes=2**19)
    assert load_torch_state_dict(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]   # under the default 4 GiB
    # the pickle itself: a state dict's is small, so a large one is refused before it is inflated
    padded = _forged_tensor_pickle(4, 0, (4,), (1,))[:-1] + b"N" * (65 * 2**20) + b"."   # NONE opcodes
    with zipfile.ZipFile(tmp_path / "big_pickle.pth", "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("archive/data.pkl", padded)
        out.writestr("archive/data/0", data)
    refused = r"data.pkl declares \d+ bytes, more than the 67108864 a state dict needs"
    with pytest.raises(UnsafeTorchFileError, match=refused):
        load_torch_state_dict(tmp_path / "big_pickle.pth")


def test_reader_errors_for_missing_and_non_torch_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such PyTorch weights file"):
        load_torch_state_dict(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable torch.save file"):
        load_torch_state_dict(junk)


# --------------------------------------------------------------------------- the torch reference network
def _torch_fid_inception(torch):
    """pytorch-fid's FID Inception-v3 (pytorch_fid/inception.py over torchvision's Inception3), written out."""
    nn, F = torch.nn, torch.nn.functional

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, **kwargs):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)), inplace=True)

    class FIDInceptionA(nn.Module):
        def __init__(self, cin, pool_features):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
            self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
            self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

        def forward(self, x):
            pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                              self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                              self.branch_pool(pool)], 1)

    class InceptionB(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

        def forward(self, x):
            return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                              F.max_pool2d(x, kernel_size=3, stride=2)], 1)

    class FIDInceptionC(nn.Module):
        def __init__(self, cin, c7):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d7 = self.branch7x7dbl_1(x)
            d7 = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(d7))))
            pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(pool)], 1)

    class InceptionD(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

        def forward(self, x):
            b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
            return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

    class FIDInceptionE(nn.Module):
        def __init__(self, cin, pool):
            super().__init__()
            self.pool_kind = pool
            self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
            self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
            self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d3 = torch.cat([self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)], 1)
            if self.pool_kind == "avg":   # FIDInceptionE_1
                pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            else:                         # FIDInceptionE_2
                pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            return torch.cat([self.branch1x1(x), b3, d3, self.branch_pool(pool)], 1)

    class FIDInceptionV3(nn.Module):
        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = FIDInceptionA(192, pool_features=32)
            self.Mixed_5c = FIDInceptionA(256, pool_features=64)
            self.Mixed_5d = FIDInceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = FIDInceptionC(768, c7=128)
            self.Mixed_6c = FIDInceptionC(768, c7=160)
            self.Mixed_6d = FIDInceptionC(768, c7=160)
            self.Mixed_6e = FIDInceptionC(768, c7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = FIDInceptionE(1280, "avg")
            self.Mixed_7c = FIDInceptionE(2048, "max")
            self.fc = nn.Linear(2048, 1008)

        def forward(self, images, resize=True):
            """pytorch-fid's InceptionV3([3], resize_input, normalize_input=True) on [0, 1] images."""
            x = images
            if resize:
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = 2 * x - 1
            x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
            x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
            for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                          self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
                x = block(x)
            return F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1)

    return FIDInceptionV3()


def _randomised(torch, net, seed=0):
    """Random weights that keep activations O(1) through ~95 layers (He-scaled convs, BN statistics
    and affine parameters away from the identity, so a BN mistake shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def torch_fid_weights(tmp_path_factory):
    """(torch network in float64, path of its torch.save'd state dict)."""
    torch = pytest.importorskip("torch", reason="torch is the oracle of the parity test")
    net = _randomised(torch, _torch_fid_inception(torch)).double()
    path = tmp_path_factory.mktemp("fid") / "random_fid_inception.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_fid_inception_matches_pytorch_fid_in_float64(torch_fid_weights, torch):
    from gan.inception import FIDInceptionV3
    net_t, path = torch_fid_weights
    # below 299 px (the network takes >= 75 px): the same layers, a quarter of the work of 299 px
    net = FIDInceptionV3.from_weights(path, resize_input=False, dtype=np.float64)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 91, 91))
    ours = net(images)
    with torch.no_grad():
        theirs = net_t(torch.from_numpy((images + 1) / 2), resize=False).numpy()
    assert ours.shape == (2, 2048) and theirs.std() > 0.05
    # float64 throughout: only summation order differs
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9 * np.abs(theirs).max())


def test_fid_inception_features_match_at_299_from_small_images(torch_fid_weights, torch):
    from gan.inception import FIDInceptionV3, InceptionFeatures
    net_t, path = torch_fid_weights
    net_t = net_t.float()
    extractor = InceptionFeatures(FIDInceptionV3.from_weights(path), batch_size=1)  # float32, 299x299 resize
    images = np.random.default_rng(1).uniform(-1, 1, (2, 1, 28, 28)).astype(np.float32)  # MNIST-like
    ours = extractor.features(images)
    with torch.no_grad():
        theirs = net_t(torch.from_numpy(np.repeat((images + 1) / 2, 3, axis=1))).double().numpy()
    net_t.double()
    # float32 through ~95 layers: each product sums up to 3,456 terms; observed max error ~1e-6 of the
    # feature scale, 1e-4 leaves room for other BLAS builds yet fails on any wrong layer (errors are O(1))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    probs = extractor.probabilities_from_features(ours)
    assert probs.shape == (2, 1008)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_resize_bilinear_matches_torch_interpolate(torch):
    from gan.inception import resize_bilinear
    x = np.random.default_rng(2).standard_normal((2, 3, 13, 28))
    for size in ((299, 299), (7, 40), (13, 28)):
        expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                                   align_corners=False).numpy()
        np.testing.assert_allclose(resize_bilinear(x, size), expected, rtol=1e-12, atol=1e-12)


def test_missing_or_wrong_weights_say_where_to_get_them(tmp_path, torch):
    from gan.inception import FID_WEIGHTS_URL, FIDInceptionV3
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
        FIDInceptionV3.from_weights(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not hold the FID Inception-v3 weights") as info:
        FIDInceptionV3.from_weights(wrong)
    assert FID_WEIGHTS_URL in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(ValueError, match="pytorch-fid/releases"):
        FIDInceptionV3.from_weights(junk)


def test_features_refuse_integer_images():
    # uint8 [0, 255] ran through the network as if it were [-1, 1]: features of nothing meaningful
    from gan.inception import FIDInceptionV3, InceptionFeatures
    extractor = InceptionFeatures(FIDInceptionV3(), batch_size=1)
    with pytest.raises(ValueError, match=r"float images in \[-1, 1\], got dtype uint8 .*ToFloat"):
        extractor.features(np.zeros((1, 3, 8, 8), np.uint8))
