"""Time full GAN training iterations, nnbox (through GANTrainer.step) against the same networks in torch.

    python benchmarks/bench_train.py                                  # CPU, float32, all three models
    python benchmarks/bench_train.py --models dcgan64 --repeats 30 --json benchmarks/results/cpu.json
    python benchmarks/bench_train.py --device gpu                     # CuPy against torch.cuda
    python benchmarks/bench_train.py --no-memory                      # skip the peak-memory subprocesses
    python benchmarks/bench_train.py --profile 5 --no-torch           # where nnbox's step time goes

One iteration is what `gan.trainer.GANTrainer.step` does with `balance="alternate"` (both networks
train every turn) and the recipe's defaults (non-saturating loss, one-sided label smoothing 0.1,
Adam lr 2e-4, betas (0.5, 0.999), batch 64):

    fake = G(z);  D(real), D(fake)  (two passes, separate BatchNorm statistics)
    D step: backward of both passes, Adam on D
    G step: D frozen, D(fake) again, backward through D into G, Adam on G
    the logged scalars (D(x), D(G(z)), accuracies, losses) fetched once

nnbox is timed by calling `GANTrainer.step` itself, so what is measured is what users run. torch runs
the identical architecture (same layer shapes, hence the same FLOPs) with the same step: D's
parameters are frozen (requires_grad False) during G's step, as nnbox's trainer does, and the same
scalars are fetched with `.item()`. Models:

    dcgan64  build_gan("dcgan", image_size=64) (width 64, latent 100)
    dcgan32  build_gan("dcgan", image_size=32, width=32)
    faces    build_gan("faces", image_size=32): G width 64 (dropout 0), D width 32 (dropout 0.3)

Timing: warm-up iterations first, then nnbox and torch iterations alternate, so both see the same
machine noise; the median and the interquartile range of the repeats are reported, the ratio of the
medians and the "paired" ratio (the median of each nnbox iteration over the torch iteration right
after it, with its IQR: slow drifts of the machine's speed cancel within a pair), and the median
CPU time of the process per iteration (time.process_time: all its threads; with one thread each
it is the work done, nearly free of the waiting that other processes on a shared machine add). torch keeps its
default thread count (torch.get_num_threads(), printed) unless --torch-threads says otherwise;
NumPy's BLAS uses its own (printed). On a loaded machine torch's OpenMP threads can wait on each
other badly (2 threads 10x slower than 1 was seen on a shared 2-core VM): compare both settings.

GFLOP/s counts only the convolutions and Linear layers, analytically: a layer with M multiply-adds
per forward pass costs 2M FLOPs forward and 4M backward (input gradient + weight gradient). One
iteration is G forward + backward (6 M_G) and D: three forwards (real, fake, fake again), two full
backwards (D step) and one input-gradient-only backward (G step, D frozen): (6 + 8 + 2) M_D = 16 M_D.
The same count is used for both frameworks (the work the step needs), so their GFLOP/s ratio is the
inverse of their time ratio.

Peak memory: each framework runs, alone, in a fresh subprocess: build the models and the trainer,
reset the kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`), run four iterations, and
report VmHWM - VmRSS at the reset: the extra resident memory training needs on top of the weights
(gradients, Adam's moments, the activations saved for backward, temporaries). The same method for
both; nnbox's subprocess also reports tracemalloc's peak of the NumPy allocations (NumPy reports
its data buffers to tracemalloc; RSS can be lower, as untouched pages of a fresh array are not
resident). On the GPU: torch.cuda.max_memory_allocated and, for CuPy, the peak of the bytes its
memory pool hands out (a cupy MemoryHook), both over the same four iterations.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nnbox import backend  # noqa: E402

MODELS = {
    # name: (build_gan arch, image size, width (None: the architecture's defaults))
    "dcgan64": ("dcgan", 64, 64),
    "dcgan32": ("dcgan", 32, 32),
    "faces": ("faces", 32, None),
}
TARGETS = {"dcgan64": 1.1, "dcgan32": 1.3, "faces": 1.3}  # the time ratios on the CPU
MEMORY_TARGET = 1.5
BATCH = 64
LATENT = 100
LABEL_SMOOTHING = 0.1  # TrainConfig's default


# --------------------------------------------------------------------------- nnbox
def nnbox_trainer(model, device, run_dir):
    """A GANTrainer with the recipe's defaults, both networks training every turn."""
    from gan.trainer import GANTrainer, TrainConfig
    arch, size, width = MODELS[model]
    config = TrainConfig(arch=arch, image_size=size, width=width, latent_dim=LATENT, balance="alternate",
                         label_smoothing=LABEL_SMOOTHING, device=device, progress=False, report=False)
    return GANTrainer.from_config(config, run_dir, overwrite=True)


def count_macs(network):
    """Multiply-adds of one forward pass of an nnbox network that has just run forward, as its layers
    are written: a convolution that ran fused with the upsampling before it (layers/resize_conv.py,
    fewer multiply-adds) is counted as a convolution of the upsampled image, as torch computes it."""
    from layers.conv import Conv2d, ConvTranspose2d
    from layers.linear import Linear
    from layers.resize_conv import ResizeConvolution
    from nnbox.module import Sequential
    fused_inputs = {}   # conv -> the shape of the upsampled image it convolved
    for module in network.modules():
        if isinstance(module, Sequential):
            for step in module._last_steps():
                if isinstance(step, ResizeConvolution) and step.saved is not None:
                    n, c, h, w = step.saved[0]
                    sh, sw = step.unpool.kernel_size
                    fused_inputs[id(step.conv)] = (n, c, h * sh, w * sw)
    macs = 0
    for module in network.modules():
        saved = module._saved
        if id(module) in fused_inputs:   # a "same" convolution: output size = input size
            n, _, h, w = fused_inputs[id(module)]
            kh, kw = module.kernel_size
            macs += n * h * w * module.in_channels * module.out_channels * kh * kw
        elif isinstance(module, Conv2d):
            n = saved.x_shape[0]
            kh, kw = module.kernel_size
            macs += n * module.out_channels * saved.out_size[0] * saved.out_size[1] * module.in_channels * kh * kw
        elif isinstance(module, ConvTranspose2d):
            n, _, h, w = saved.x_shape
            kh, kw = module.kernel_size
            macs += n * h * w * module.in_channels * module.out_channels * kh * kw
        elif isinstance(module, Linear):
            macs += saved.x.shape[0] * module.in_features * module.out_features
    return macs


def iteration_flops(trainer):
    """FLOPs of one iteration (see the module docstring), from the networks' last forward passes."""
    return 2 * (3 * count_macs(trainer.G) + 8 * count_macs(trainer.D))


# --------------------------------------------------------------------------- torch
def torch_networks(torch, model):
    """(G, D) in torch with nnbox's architecture (gan/models.py), layer for layer."""
    nn = torch.nn
    arch, size, width = MODELS[model]
    if arch == "dcgan":
        n_layers = {32: 3, 64: 4}[size]
        widths = [width * 2**i for i in reversed(range(n_layers))]
        g = [nn.Unflatten(1, (LATENT, 1, 1)), nn.ConvTranspose2d(LATENT, widths[0], 4, 1, 0, bias=False),
             nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            g += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        g += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        d_widths = [3] + widths[::-1]
        d = []
        for index, (c_in, c_out) in enumerate(zip(d_widths[:-1], d_widths[1:])):
            d += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=index == 0)]
            d += [nn.BatchNorm2d(c_out)] if index > 0 else []
            d += [nn.LeakyReLU(0.2)]
        d += [nn.Conv2d(d_widths[-1], 1, 4, 1, 0), nn.Flatten()]
    else:  # the faces GAN at 32x32: G width 64, D width 32, D dropout 0.3 (FacesGenerator/Discriminator)
        gw, dw = 64, 32
        widths = [max(4 * gw // 2**i, gw) for i in range(3)]
        g = [nn.Linear(LATENT, widths[0] * 16), nn.Unflatten(1, (widths[0], 4, 4)), nn.ReLU(),
             nn.BatchNorm2d(widths[0])]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            g += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ConvTranspose2d(c_in, c_out, 3, padding=1),
                  nn.ReLU(), nn.BatchNorm2d(c_out)]
        g += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ConvTranspose2d(widths[-1], 3, 3, padding=1), nn.Tanh()]
        d_widths = [3, dw, 2 * dw, 4 * dw]
        d = []
        for c_in, c_out in zip(d_widths[:-1], d_widths[1:]):
            d += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2), nn.LeakyReLU(0.2), nn.Dropout(0.3)]
        d += [nn.Flatten(), nn.Linear(4 * dw * (size // 8) ** 2, 4 * dw), nn.LeakyReLU(0.2), nn.Dropout(0.3),
              nn.Linear(4 * dw, 1)]
    return nn.Sequential(*g), nn.Sequential(*d)


class TorchStep:
    """The same turn as GANTrainer.step, in torch (both networks train; D frozen in G's step)."""

    def __init__(self, torch, model, device):
        self.torch, self.device = torch, device
        self.G, self.D = (net.to(device).train() for net in torch_networks(torch, model))
        adam = lambda net: torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))  # noqa: E731
        self.opt_g, self.opt_d = adam(self.G), adam(self.D)
        self.real_targets = torch.full((BATCH, 1), 1.0 - LABEL_SMOOTHING, device=device)
        self.fake_targets = torch.zeros((BATCH, 1), device=device)
        self.ones = torch.ones((BATCH, 1), device=device)
        self.bce = torch.nn.functional.binary_cross_entropy_with_logits

    def __call__(self, real):
        torch = self.torch
        z = torch.randn(real.shape[0], LATENT, device=self.device)
        fake = self.G(z)
        self.opt_d.zero_grad(set_to_none=False)
        real_logits = self.D(real)
        fake_logits = self.D(fake.detach())
        d_loss = self.bce(real_logits, self.real_targets) + self.bce(fake_logits, self.fake_targets)
        d_loss.backward()
        self.opt_d.step()
        self.D.requires_grad_(False)
        g_logits = self.D(fake)
        g_loss = self.bce(g_logits, self.ones)
        self.opt_g.zero_grad(set_to_none=False)
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        with torch.no_grad():
            scalars = torch.stack([torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean(),
                                   (real_logits > 0).float().mean(), (fake_logits < 0).float().mean(),
                                   (g_logits > 0).float().mean(), d_loss, g_loss])
        return scalars.tolist()  # one device-to-host copy, as the trainer


# --------------------------------------------------------------------------- timing
def blas_threads():
    """The thread count of NumPy's BLAS (threadpoolctl when installed, else the environment or the cores)."""
    try:
        from threadpoolctl import threadpool_info
        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return counts[0]
    except ImportError:
        pass
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return os.cpu_count() or 1


def real_batch(model, xp):
    size = MODELS[model][1]
    batch = np.random.default_rng(0).uniform(-1, 1, (BATCH, 3, size, size)).astype(np.float32)
    return xp.asarray(batch)


def quartiles(values):
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q3 - q1


def bench_model(model, args, torch, run_dir):
    xp = backend.require_cupy() if args.device == "gpu" else np
    trainer = nnbox_trainer(model, args.device, run_dir)
    batch = real_batch(model, xp)
    torch_device = "cuda" if args.device == "gpu" else "cpu"
    t_step = t_batch = None
    if torch is not None:
        torch.manual_seed(0)
        t_step = TorchStep(torch, model, torch_device)
        t_batch = torch.as_tensor(backend.to_numpy(batch), device=torch_device)

    def sync():
        if args.device == "gpu":
            backend.synchronize(xp)
            if torch is not None:
                torch.cuda.synchronize()

    def timed(function, value):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        function(value)
        sync()
        return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3

    for _ in range(args.warmup):
        timed(trainer.step, batch)
        if t_step is not None:
            timed(t_step, t_batch)
    flops = iteration_flops(trainer)
    times = {"nnbox": [], "torch": []}
    for _ in range(args.repeats):
        times["nnbox"].append(timed(trainer.step, batch))
        if t_step is not None:
            times["torch"].append(timed(t_step, t_batch))
    row = {"model": model, "batch": BATCH, "image_size": MODELS[model][1], "gflop_per_iteration": flops / 1e9}
    for name, pairs in times.items():
        if not pairs:
            continue
        values, cpu = [wall for wall, _ in pairs], [used for _, used in pairs]
        median, iqr = quartiles(values)
        row[name] = {"median_ms": median, "iqr_ms": iqr, "min_ms": min(values), "images_per_s": BATCH / median * 1e3,
                     "gflop_per_s": flops / median / 1e6, "cpu_median_ms": statistics.median(cpu),
                     "times_ms": values, "cpu_times_ms": cpu}
    if t_step is not None:
        row["time_ratio"] = row["nnbox"]["median_ms"] / row["torch"]["median_ms"]
        row["cpu_time_ratio"] = row["nnbox"]["cpu_median_ms"] / row["torch"]["cpu_median_ms"]
        # each nnbox iteration against the torch iteration right after it: the machine's slow drift
        # (10-20% within an hour on a shared VM) cancels in each pair; the spread says how sure the ratio is
        paired = [nnbox_ms / torch_ms for (nnbox_ms, _), (torch_ms, _) in zip(times["nnbox"], times["torch"])]
        row["paired_ratio"], row["paired_ratio_iqr"] = quartiles(paired)
        if args.device == "cpu":
            row["target_ratio"] = TARGETS[model]
    return row


# --------------------------------------------------------------------------- profile
# the functions whose own time (cProfile's tottime) is a matrix product: nnbox's convolution
# products (layers/conv.py) and the Linear layers (a product plus a bias add)
MATRIX_PRODUCT_FUNCTIONS = {("conv.py", "_matmul"), ("conv.py", "_accumulate_weight_grad"), ("conv.py", "_convolve"),
                            ("linear.py", "forward"), ("linear.py", "backward")}


def profile_split(model, args, run_dir, iterations, dump_path=None):
    """cProfile `iterations` nnbox steps: seconds per step in matrix products and in the rest (with the
    rest's largest functions). The profiler's own overhead is counted in the rest. `dump_path`: also
    save the statistics there (for `python -m pstats PATH`)."""
    import cProfile
    import pstats
    xp = backend.require_cupy() if args.device == "gpu" else np
    trainer = nnbox_trainer(model, args.device, run_dir)
    batch = real_batch(model, xp)
    for _ in range(2):
        trainer.step(batch)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        trainer.step(batch)
    profiler.disable()
    if dump_path:
        profiler.dump_stats(dump_path)
    stats = pstats.Stats(profiler).stats
    products, rest = 0.0, {}
    for (filename, _, name), (_, _, own, _, _) in stats.items():
        if (os.path.basename(filename), name) in MATRIX_PRODUCT_FUNCTIONS:
            products += own
        else:
            key = f"{os.path.basename(filename)}:{name}" if filename != "~" else name
            rest[key] = rest.get(key, 0.0) + own
    total = products + sum(rest.values())
    top = sorted(rest.items(), key=lambda item: -item[1])[:8]
    return {"iterations": iterations, "step_ms": total / iterations * 1e3,
            "matrix_products_ms": products / iterations * 1e3, "rest_ms": (total - products) / iterations * 1e3,
            "matrix_products_share": products / total,
            "rest_top_ms": {name: seconds / iterations * 1e3 for name, seconds in top}}


def print_split(split):
    print(f"{'':<8} profile ({split['iterations']} steps): {split['step_ms']:.0f} ms per step, matrix products "
          f"{split['matrix_products_ms']:.0f} ms ({100 * split['matrix_products_share']:.0f}%), the rest "
          f"{split['rest_ms']:.0f} ms; largest: " + ", ".join(f"{name} {ms:.0f}" for name, ms in
                                                           list(split['rest_top_ms'].items())[:5]), flush=True)


# --------------------------------------------------------------------------- memory
def _status_kib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(framework, model, device, torch_threads=None, iterations=4):
    """Run in a fresh subprocess: the peak extra memory of `iterations` training iterations (MiB)."""
    result = {"framework": framework, "model": model, "device": device}
    gpu = device == "gpu"
    if framework == "nnbox":
        xp = backend.require_cupy() if gpu else np
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = nnbox_trainer(model, device, run_dir)
            batch = real_batch(model, xp)
            step = lambda: trainer.step(batch)  # noqa: E731
            result.update(_measure(step, gpu, xp=xp, iterations=iterations, trace_numpy=not gpu))
    else:
        import torch
        if torch_threads:
            torch.set_num_threads(torch_threads)
        torch_device = "cuda" if gpu else "cpu"
        t_step = TorchStep(torch, model, torch_device)
        batch = torch.as_tensor(real_batch(model, np), device=torch_device)
        result.update(_measure(lambda: t_step(batch), gpu, torch=torch, iterations=iterations))
    return result


def _measure(step, gpu, iterations, xp=None, torch=None, trace_numpy=False):
    if gpu:
        return _measure_gpu(step, iterations, xp, torch)
    import tracemalloc
    if trace_numpy:
        tracemalloc.start()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM (the peak resident set) to the current VmRSS
    baseline = _status_kib("VmRSS")
    for _ in range(iterations):
        step()
    out = {"peak_extra_rss_mib": (_status_kib("VmHWM") - baseline) / 1024, "baseline_rss_mib": baseline / 1024}
    if trace_numpy:
        out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out


def _measure_gpu(step, iterations, xp, torch):
    if torch is not None:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
        return {"peak_extra_device_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    import cupy
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.used = self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.used += mem_size
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.used -= mem_size

    backend.synchronize(xp)
    hook = PeakHook()
    with hook:
        for _ in range(iterations):
            step()
        cupy.cuda.Device().synchronize()
    # allocations made before the hook and freed inside it count negative: peak over the running sum
    return {"peak_extra_device_mib": hook.peak / 2**20}


def measure_memory(model, args, with_torch):
    out = {}
    for framework in ("nnbox", "torch") if with_torch else ("nnbox",):
        command = [sys.executable, os.path.abspath(__file__), "--_memory-child", framework, model,
                   "--device", args.device] + (["--torch-threads", str(args.torch_threads)] if args.torch_threads else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out[framework] = {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        out[framework] = json.loads(done.stdout.strip().splitlines()[-1])
    key = "peak_extra_device_mib" if args.device == "gpu" else "peak_extra_rss_mib"
    if with_torch and all(key in out.get(f, {}) for f in ("nnbox", "torch")):
        out["ratio"] = out["nnbox"][key] / out["torch"][key]
        out["target_ratio"] = MEMORY_TARGET
    out["measure"] = key
    return out


# --------------------------------------------------------------------------- report
def print_row(row, memory):
    nn = row["nnbox"]
    line = (f"{row['model']:<8} nnbox {nn['median_ms']:8.1f} ms (IQR {nn['iqr_ms']:5.1f}) "
            f"{nn['images_per_s']:7.1f} img/s {nn['gflop_per_s']:6.1f} GFLOP/s")
    if "torch" in row:
        t = row["torch"]
        line += (f" | torch {t['median_ms']:8.1f} ms (IQR {t['iqr_ms']:5.1f}) {t['images_per_s']:7.1f} img/s "
                 f"{t['gflop_per_s']:6.1f} GFLOP/s | time x{row['time_ratio']:.2f} "
                 f"(paired x{row['paired_ratio']:.2f}, IQR {row['paired_ratio_iqr']:.2f})")
        if "target_ratio" in row:
            line += f" (target <= {row['target_ratio']})"
        line += (f" | CPU time nnbox {nn['cpu_median_ms']:.0f} ms, torch {t['cpu_median_ms']:.0f} ms, "
                 f"x{row['cpu_time_ratio']:.2f}")
    print(line, flush=True)
    if memory:
        key = memory["measure"]
        parts = [f"{f} {memory[f][key]:.0f} MiB" if key in memory.get(f, {}) else f"{f}: {memory.get(f)}"
                 for f in ("nnbox", "torch") if f in memory]
        extra = ""
        if "tracemalloc_peak_mib" in memory.get("nnbox", {}):
            extra = f" (nnbox NumPy peak by tracemalloc {memory['nnbox']['tracemalloc_peak_mib']:.0f} MiB)"
        ratio = f", x{memory['ratio']:.2f} (target <= {MEMORY_TARGET})" if "ratio" in memory else ""
        print(f"{'':<8} peak extra memory ({key}): " + ", ".join(parts) + ratio + extra, flush=True)


def machine_info(torch, args):
    info = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "blas_threads": blas_threads(), "device": args.device,
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if args.device == "gpu":
            info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS),
                        help="which models (all three)")
    parser.add_argument("--repeats", type=int, default=15, help="timed iterations per framework (15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (3)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: NumPy against torch; gpu: CuPy against torch.cuda")
    parser.add_argument("--torch-threads", type=int, metavar="N",
                        help="torch.set_num_threads(N) (default: torch's own default, printed)")
    parser.add_argument("--no-torch", action="store_true", help="time nnbox only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--profile", type=int, metavar="STEPS", default=0,
                        help="also cProfile this many nnbox steps per model: time in matrix products vs the rest")
    parser.add_argument("--profile-dump", metavar="PATH",
                        help="with --profile: also save each model's cProfile statistics (pstats format) to PATH, "
                             "where {model} is replaced by the model's name")
    parser.add_argument("--json", metavar="PATH", help="also write every result (and the raw times) here")
    parser.add_argument("--_memory-child", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (a median and quartiles)")
    if args.profile_dump and not args.profile:
        parser.error("--profile-dump needs --profile STEPS")
    try:
        if args.device == "gpu":
            backend.require_cupy()
        if args._memory_child:
            print(json.dumps(memory_child(*args._memory_child, args.device, args.torch_threads)))
            return
        torch = None
        if not args.no_torch:
            try:
                import torch
            except ImportError:
                print("torch is not installed: timing nnbox only (`pip install -e .[parity]` adds the comparison)")
        if torch is not None and args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        if torch is not None and args.device == "gpu" and not torch.cuda.is_available():
            print("torch has no CUDA here: timing nnbox only")
            torch = None
        info = machine_info(torch, args)
        print(f"{info['cpu']}, {info['cpu_count']} CPUs; NumPy {info['numpy']} ({info['blas_threads']} BLAS threads, "
              f"OPENBLAS_THREAD_TIMEOUT={info['openblas_thread_timeout']})"
              + (f", torch {info['torch']} ({info['torch_threads']} threads)" if torch is not None else "")
              + f"; {args.device}, float32, batch {BATCH}, median of {args.repeats} after {args.warmup} warm-up")
        results = {"info": info, "repeats": args.repeats, "warmup": args.warmup, "models": []}
        with tempfile.TemporaryDirectory() as run_dir:
            for model in args.models:
                row = bench_model(model, args, torch, os.path.join(run_dir, model))
                row["memory"] = None if args.no_memory else measure_memory(model, args, torch is not None)
                results["models"].append(row)
                print_row(row, row["memory"])
                if args.profile:
                    row["profile"] = profile_split(model, args, os.path.join(run_dir, model + "_profile"), args.profile,
                                                   args.profile_dump and args.profile_dump.replace("{model}", model))
                    print_split(row["profile"])
    except RuntimeError as error:  # no CuPy / no device for --device gpu: one line, no traceback
        sys.exit(f"bench_train: {error}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
