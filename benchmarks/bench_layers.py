"""Time forward and backward of every convolution of a DCGAN, nnbox against torch.

    python benchmarks/bench_layers.py                       # CPU, batch 64, float32, the 64x64 DCGAN
    python benchmarks/bench_layers.py --model dcgan32       # the 32x32 DCGAN (widths 32) of bench_train
    python benchmarks/bench_layers.py --repeats 20 --json bench.json
    python benchmarks/bench_layers.py --device gpu          # cupy against torch.cuda

Each layer is timed after a warm-up; nnbox and torch repeats alternate so that both see the same
machine noise, and the median of the repeats is reported. Each timed call follows an untimed call of
the same framework: torch's OpenMP worker threads spin for about 5 ms after each parallel region
(measured on the 2-core VM), as long as many a layer call (0.1-50 ms), so a call timed right after
torch's shares its cores with those spinning threads (`--model dcgan32`: nnbox's layers measured
55 ms in all that way against 35 ms like this). Pausing instead does not work on a VM: an idle virtual CPU is slow to
wake, and both frameworks' calls after a 20 ms sleep took 2-10x longer. torch runs with the thread count that
NumPy's BLAS uses. Backward times include the input gradient in both (the torch input requires
grad). The table gives ms per layer and nnbox/torch ratios; the summary gives the ratio of the sums
and the worst layer. The issue's target: sum ratio <= 1.3, no layer worse than 2x.
"""
import argparse
import ctypes
import glob
import json
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from layers.conv import Conv2d, ConvTranspose2d  # noqa: E402
from nnbox import backend  # noqa: E402

def dcgan_layers(size, width, latent=100):
    """The convolutions of build_gan("dcgan", image_size=size, width=width): (name, class, in_channels,
    out_channels, kernel, stride, padding, input size). D's widths are width * 1, 2, 4, ... up to 4x4
    maps; G mirrors them from a 1x1 latent."""
    steps = int(math.log2(size)) - 2                    # stride-2 layers between 4x4 and size x size
    widths = [width * 2 ** k for k in range(steps)]
    g = [(latent, widths[-1], 4, 1, 0, 1)]
    g += [(widths[k], widths[k - 1] if k else 3, 4, 2, 1, size // 2 ** (k + 1)) for k in range(steps - 1, -1, -1)]
    d = [(widths[k - 1] if k else 3, widths[k], 4, 2, 1, size // 2 ** k) for k in range(steps)] + \
        [(widths[-1], 1, 4, 1, 0, 4)]
    layers = []
    for prefix, cls, specs in (("G.convT", ConvTranspose2d, g), ("D.conv", Conv2d, d)):
        for index, (cin, cout, k, stride, pad, inside) in enumerate(specs, 1):
            if cls is ConvTranspose2d:
                outside = (inside - 1) * stride - 2 * pad + k
            else:
                outside = (inside + 2 * pad - k) // stride + 1
            name = f"{prefix}{index} {cin}->{cout} {inside}->{outside}"
            layers.append((name, cls, cin, cout, k, stride, pad, inside))
    return layers


MODELS = {"dcgan64": dcgan_layers(64, 64), "dcgan32": dcgan_layers(32, 32)}   # bench_train's dcgan64 and dcgan32


def blas_threads():
    """The thread count of NumPy's OpenBLAS (best effort), else the environment's, else the cores."""
    libs_dir = os.path.dirname(np.__file__) + ".libs"
    for path in glob.glob(os.path.join(libs_dir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                       "openblas_get_num_threads"):
            if hasattr(lib, symbol):
                return int(getattr(lib, symbol)())
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return os.cpu_count() or 1


def torch_layer(torch, spec, layer, device):
    _, cls, cin, cout, k, s, p, _ = spec
    kind = torch.nn.Conv2d if cls is Conv2d else torch.nn.ConvTranspose2d
    module = kind(cin, cout, k, s, p, bias=layer.bias is not None).to(device)
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(backend.to_numpy(layer.weight.data)))
        if layer.bias is not None:
            module.bias.copy_(torch.as_tensor(backend.to_numpy(layer.bias.data)))
    return module


def bench(args):
    xp = np
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: timing nnbox only (`pip install -e .[parity]` adds the comparison)")
    if args.device == "gpu":
        xp = backend.require_cupy()
    threads = blas_threads()
    if torch is not None:
        torch.set_num_threads(threads)
        if args.device == "gpu" and not torch.cuda.is_available():
            print("torch has no CUDA here: timing nnbox only")
            torch = None
    torch_device = "cuda" if args.device == "gpu" else "cpu"

    def sync():
        backend.synchronize(xp)
        if torch is not None and args.device == "gpu":
            torch.cuda.synchronize()

    def timed(function):
        sync()
        start = time.perf_counter()
        result = function()
        sync()
        return result, (time.perf_counter() - start) * 1e3

    rng = np.random.default_rng(0)
    rows = []
    for spec in MODELS[args.model]:
        name, cls, cin, cout, k, s, p, size = spec
        layer = cls(cin, cout, k, s, p, bias=args.bias, rng=rng)
        if args.device == "gpu":
            layer.to("gpu")
        x_host = rng.standard_normal((args.batch, cin, size, size)).astype(np.float32)
        x = xp.asarray(x_host)
        y = layer(x)
        dy_host = rng.standard_normal(y.shape).astype(np.float32)
        dy = xp.asarray(dy_host)
        if torch is not None:
            t_layer = torch_layer(torch, spec, layer, torch_device)
            t_x = torch.as_tensor(x_host, device=torch_device).requires_grad_(True)
            t_dy = torch.as_tensor(dy_host, device=torch_device)

        def nnbox_step():
            _, forward_ms = timed(lambda: layer(x))
            _, backward_ms = timed(lambda: layer.backward(dy))
            return forward_ms, backward_ms

        def torch_step():
            t_x.grad = None
            for param in t_layer.parameters():
                param.grad = None
            t_y, forward_ms = timed(lambda: t_layer(t_x))
            _, backward_ms = timed(lambda: t_y.backward(t_dy))
            return forward_ms, backward_ms

        for _ in range(args.warmup):
            nnbox_step()
            if torch is not None:
                torch_step()
        times = {"nnbox_fwd": [], "nnbox_bwd": [], "torch_fwd": [], "torch_bwd": []}
        for _ in range(args.repeats):
            # the first call after the other framework's is not timed (module docstring)
            nnbox_step()
            forward_ms, backward_ms = nnbox_step()
            times["nnbox_fwd"].append(forward_ms)
            times["nnbox_bwd"].append(backward_ms)
            if torch is not None:
                torch_step()
                forward_ms, backward_ms = torch_step()
                times["torch_fwd"].append(forward_ms)
                times["torch_bwd"].append(backward_ms)
        row = {"layer": name, "input_shape": list(x.shape), "output_shape": list(y.shape)}
        row.update({key: statistics.median(values) for key, values in times.items() if values})
        rows.append(row)
        print_row(row, torch is not None, header=len(rows) == 1)
    return summarise(rows, torch is not None, args, threads)


def print_row(row, with_torch, header):
    if header:
        columns = f"{'layer':<26}{'nnbox fwd':>10}{'nnbox bwd':>10}"
        if with_torch:
            columns += f"{'torch fwd':>10}{'torch bwd':>10}{'fwd x':>7}{'bwd x':>7}{'total x':>8}"
        print(columns + "   (ms, median)")
    line = f"{row['layer']:<26}{row['nnbox_fwd']:>10.2f}{row['nnbox_bwd']:>10.2f}"
    if with_torch:
        row["ratio_fwd"] = row["nnbox_fwd"] / row["torch_fwd"]
        row["ratio_bwd"] = row["nnbox_bwd"] / row["torch_bwd"]
        row["ratio_total"] = (row["nnbox_fwd"] + row["nnbox_bwd"]) / (row["torch_fwd"] + row["torch_bwd"])
        line += (f"{row['torch_fwd']:>10.2f}{row['torch_bwd']:>10.2f}{row['ratio_fwd']:>7.2f}"
                 f"{row['ratio_bwd']:>7.2f}{row['ratio_total']:>8.2f}")
    print(line, flush=True)


def summarise(rows, with_torch, args, threads):
    total_nnbox = sum(row["nnbox_fwd"] + row["nnbox_bwd"] for row in rows)
    summary = {"model": args.model, "device": args.device, "batch": args.batch, "repeats": args.repeats,
               "bias": args.bias,
               "threads": threads, "numpy": np.__version__, "python": platform.python_version(),
               "machine": platform.processor() or platform.machine(), "layers": rows,
               "nnbox_total_ms": total_nnbox}
    print(f"\nsum over layers: nnbox {total_nnbox:.1f} ms", end="")
    if with_torch:
        total_torch = sum(row["torch_fwd"] + row["torch_bwd"] for row in rows)
        worst = max(rows, key=lambda row: row["ratio_total"])
        worst_pass = max(rows, key=lambda row: max(row["ratio_fwd"], row["ratio_bwd"]))
        summary.update(torch_total_ms=total_torch, sum_ratio=total_nnbox / total_torch,
                       worst_layer=worst["layer"], worst_ratio=worst["ratio_total"],
                       worst_single_pass_layer=worst_pass["layer"],
                       worst_single_pass_ratio=max(worst_pass["ratio_fwd"], worst_pass["ratio_bwd"]))
        print(f", torch {total_torch:.1f} ms, ratio {summary['sum_ratio']:.2f} (target <= 1.3)")
        print(f"worst layer (fwd+bwd): {worst['layer']} at {worst['ratio_total']:.2f}x (target <= 2)")
        print(f"worst single pass: {worst_pass['layer']} at {summary['worst_single_pass_ratio']:.2f}x")
    else:
        print()
    print(f"(batch {args.batch}, float32, {args.device}, {threads} BLAS/torch threads, "
          f"median of {args.repeats} after {args.warmup} warm-up)")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="dcgan64",
                        help="whose convolutions: the 64x64 DCGAN (default) or bench_train's 32x32 one")
    parser.add_argument("--batch", type=int, default=64, help="batch size (64)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per layer, median reported (10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repeats first (2)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="cpu: numpy vs torch; gpu: cupy vs torch.cuda")
    parser.add_argument("--bias", action="store_true", help="give the layers a bias (DCGAN's have none: BatchNorm follows)")
    parser.add_argument("--no-torch", action="store_true", help="time nnbox only")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        summary = bench(args)
    except RuntimeError as error:  # no CuPy / no device for --device gpu: say so, no traceback
        sys.exit(f"bench_layers: {error}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
