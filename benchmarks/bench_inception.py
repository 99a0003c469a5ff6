"""FID's Inception-v3 forward on N images at 299x299: nnbox (NumPy/CuPy) against torch, in one run.

    python benchmarks/bench_inception.py                      # 200 images, CPU, random weights
    python benchmarks/bench_inception.py --n 10000            # the full FID measure
    python benchmarks/bench_inception.py --weights pt_inception-2015-12-05-6726825d.pth
    python benchmarks/bench_inception.py --device gpu         # cupy against torch.cuda

Both networks get the same weights (random He-scaled ones saved by torch.save and read back with
gan.torch_weights, or the real pytorch-fid file), and the same random 299x299 images in batches of
--batch-size. nnbox and torch batches alternate, so both see the same machine noise; the first
batch of each is a warm-up and is not timed. torch runs with the thread count NumPy's BLAS uses.
Reports images per second for both, the ratio, and the largest feature difference (a sanity check).
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_layers import blas_threads  # noqa: E402
from gan.inception import FIDInceptionV3  # noqa: E402
from nnbox import backend  # noqa: E402


def _torch_reference():
    """The torch FID Inception written out in tests/test_inception.py (one definition, shared)."""
    spec = importlib.util.spec_from_file_location("_test_inception", ROOT / "tests" / "test_inception.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._torch_fid_inception, module._randomised


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images to measure (default 200; FID uses 10,000+)")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--weights", default=None, help="pt_inception-2015-12-05-6726825d.pth (default: random)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--no-torch", action="store_true", help="time nnbox alone")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    threads = blas_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            print("torch is not installed: timing nnbox alone")
    weights = args.weights
    if weights is None:
        if torch is None:
            parser.error("random weights are made with torch; give --weights or install torch")
        build, randomise = _torch_reference()
        net_t = randomise(torch, build(torch))
        with tempfile.TemporaryDirectory() as folder:   # 96 MB of random weights, read once
            weights = Path(folder) / "random_fid_inception.pth"
            torch.save(net_t.state_dict(), weights)
            net = FIDInceptionV3.from_weights(weights, resize_input=False).to(args.device)
    else:
        if torch is not None:
            build, _ = _torch_reference()
            net_t = build(torch)
            from gan.torch_weights import load_torch_state_dict
            net_t.load_state_dict({k: torch.from_numpy(v) for k, v in load_torch_state_dict(weights).items()})
            net_t.eval()
        net = FIDInceptionV3.from_weights(weights, resize_input=False).to(args.device)
    xp = backend.require_cupy() if args.device == "gpu" else np
    torch_device = "cuda" if args.device == "gpu" else "cpu"
    if torch is not None:
        net_t = net_t.to(torch_device)

    rng = np.random.default_rng(0)
    batches = [(i, min(args.batch_size, args.n - i)) for i in range(0, args.n, args.batch_size)]
    times = {"nnbox": 0.0, "torch": 0.0}
    worst = 0.0
    for index, (start, size) in enumerate([batches[0]] + batches):  # the first is a warm-up
        images = rng.uniform(-1, 1, (size, 3, 299, 299)).astype(np.float32)
        x = xp.asarray(images)
        backend.synchronize(xp)
        t = time.perf_counter()
        ours = net(x)
        backend.synchronize(xp)
        if index:
            times["nnbox"] += time.perf_counter() - t
        if torch is not None:
            xt = torch.from_numpy((images + 1) / 2).to(torch_device)
            with torch.no_grad():
                if torch_device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                theirs = net_t(xt, resize=False)
                if torch_device == "cuda":
                    torch.cuda.synchronize()
            if index:
                times["torch"] += time.perf_counter() - t
            theirs = theirs.cpu().numpy()
            worst = max(worst, float(np.abs(backend.to_numpy(ours) - theirs).max() / np.abs(theirs).max()))
        print(f"batch {index}/{len(batches)}", end="\r", flush=True)
    result = {"n": args.n, "batch_size": args.batch_size, "device": args.device, "threads": threads,
              "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
              "nnbox_images_per_sec": args.n / times["nnbox"]}
    line = f"nnbox: {result['nnbox_images_per_sec']:.2f} images/s"
    if torch is not None:
        result.update(torch=torch.__version__, torch_images_per_sec=args.n / times["torch"],
                      ratio_time_nnbox_over_torch=times["nnbox"] / times["torch"],
                      max_feature_difference_relative=worst)
        line += (f"   torch: {result['torch_images_per_sec']:.2f} images/s   nnbox time / torch time: "
                 f"{result['ratio_time_nnbox_over_torch']:.2f}   max feature difference: {worst:.1e} (relative)")
    print(f"{args.n} images at 299x299, batch {args.batch_size}, {args.device}, {threads} BLAS thread(s)")
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
