"""Pictures of a GAN run: sample grids (PNG), the GIF of grids across epochs, and the training plots.

Plots are drawn on pyplot-free matplotlib Figures (no display needed, and a notebook's or a
user's chosen backend is left alone) and read a `gan.history.History`:

    save_image_grid(images, "samples/epoch_000.png")      # float NCHW in [-1, 1] or uint8 NHWC
    plot_losses(history, "plots/losses.png")               # D and G in separate panels
    plot_accuracy(history, "plots/accuracy.png")           # D(x), D(G(z)); D accuracy real/fake, G success
    plot_balance(history, "plots/balance.png")             # when D and G trained, and how often
    plot_throughput(history, "plots/throughput.png")       # images per second
    make_gif(["samples/epoch_000.png", ...], "samples.gif")

Every writer goes through a temporary file and os.replace, and returns the path it wrote.
"""
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from nnbox.backend import to_numpy

from .history import atomic_write_bytes

D_COLOR, G_COLOR = "tab:blue", "tab:orange"
FIGURE_DPI = 100


# --------------------------------------------------------------------------- images
def to_uint8_images(images):
    """uint8 NHWC images from float NCHW in [-1, 1] (NumPy or CuPy) or uint8 NHWC (passed through).

    Single-channel images are repeated to RGB. A 3-D array is taken as one image.
    """
    images = to_numpy(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) float or (N, H, W, C) uint8, got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError(f"expected float images in [-1, 1] or uint8 images, got dtype {images.dtype}")
        images = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=-1.0)
        images = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got images of shape {images.shape}")
    return images


def grid_shape(n, nrow=None):
    """(rows, columns) of a grid of n images with `nrow` images per row (default: a near square)."""
    if n <= 0:
        raise ValueError("a grid needs at least one image")
    columns = int(nrow) if nrow else int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / columns)), columns


def make_grid(images, nrow=None, padding=2, pad_value=255, scale=1):
    """One uint8 (H, W, 3) picture of the images in a grid, `nrow` per row, `padding` pixels apart.

    Args:
        images: float NCHW in [-1, 1] or uint8 NHWC.
        nrow: images per row (default: ceil(sqrt(N))).
        padding: pixels between images and around the grid, filled with `pad_value`.
        scale: integer upscaling of each image (nearest neighbour), for small images.

    Shape: with N images of h x w, r rows and c columns, the grid is
        (r (h s + p) + p) x (c (w s + p) + p) x 3.
    """
    images = to_uint8_images(images)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"make_grid: scale must be a positive integer, got {scale}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = images.shape
    rows, columns = grid_shape(n, nrow)
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, 3), pad_value, np.uint8)
    for index in range(n):  # a loop over at most ~100 tiles, not over pixels
        r, c = divmod(index, columns)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = images[index]
    return grid


def _png_bytes(picture):
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def save_image_grid(images, path, nrow=None, padding=2, scale=1):
    """Write `make_grid(images, ...)` as a PNG (atomically); returns the path."""
    atomic_write_bytes(path, _png_bytes(make_grid(images, nrow, padding, scale=scale)))
    return Path(path)


def make_gif(frame_paths, path, duration_ms=500, last_frame_ms=2000):
    """An animated GIF (looping) of the image files `frame_paths`, in order; returns the path.

    Every frame is shown `duration_ms`, the last one `last_frame_ms` (so the final grid stays readable).
    Frames of different sizes are padded to the largest with white.
    """
    frame_paths = [Path(p) for p in frame_paths]
    if not frame_paths:
        raise ValueError("make_gif: no frames (the run has not written any sample grid yet)")
    frames = []
    for p in frame_paths:
        with Image.open(p) as image:
            frames.append(image.convert("RGB"))
    width = max(f.width for f in frames)
    height = max(f.height for f in frames)
    padded = []
    for frame in frames:
        if frame.size != (width, height):
            canvas = Image.new("RGB", (width, height), (255, 255, 255))
            canvas.paste(frame, (0, 0))
            frame = canvas
        padded.append(frame.quantize(colors=256, method=Image.Quantize.MEDIANCUT))
    durations = [duration_ms] * (len(padded) - 1) + [last_frame_ms]
    buffer = io.BytesIO()
    padded[0].save(buffer, format="GIF", save_all=True, append_images=padded[1:], duration=durations, loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# --------------------------------------------------------------------------- plots
def moving_average(values, window):
    """The mean of the last `window` finite values at each position (shorter at the start)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    sums = np.concatenate([[0.0], sums])
    counts = np.concatenate([[0], counts])
    index = np.arange(1, values.size + 1)
    start = np.maximum(index - window, 0)
    n = counts[index] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[index] - sums[start]) / np.maximum(n, 1), np.nan)


def _window(n):
    """A smoothing window that grows with the run: about 2% of the steps, at least 1."""
    return max(1, n // 50)


def new_figure(*grid, figsize=None, **subplots_options):
    """`(figure, axes)` like pyplot's subplots, without pyplot: no backend is chosen or switched,
    and pyplot keeps no reference (the figure is freed when dropped)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **subplots_options)


def save_figure(fig, path, dpi=FIGURE_DPI):
    """Write `fig` as a PNG at `path` atomically; returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _steps(history):
    steps = history.column("step") if len(history) else np.zeros(0)
    return np.where(np.isfinite(steps), steps, np.arange(len(steps)))


def _epoch_lines(ax, history):
    """Dotted vertical lines where each epoch after the first starts."""
    epochs, steps = history.column("epoch"), _steps(history)
    for index in np.flatnonzero(np.diff(epochs) > 0) + 1:
        ax.axvline(steps[index], color="0.8", linestyle=":", linewidth=0.8, zorder=0)


def _raw_and_smooth(ax, steps, values, color, label):
    window = _window(len(values))
    ax.plot(steps, values, color=color, alpha=0.25 if window > 1 else 1.0, linewidth=0.8,
            label=None if window > 1 else label)
    if window > 1:
        ax.plot(steps, moving_average(values, window), color=color, linewidth=1.6,
                label=f"{label} (mean of {window} steps)")


def plot_losses(history, path):
    """The D loss and the G loss against the step, in two panels (raw, and a moving average)."""
    fig, axes = new_figure(2, 1, figsize=(8, 6), sharex=True)
    steps = _steps(history)
    for ax, name, color, title in ((axes[0], "d_loss", D_COLOR, "discriminator loss"),
                                   (axes[1], "g_loss", G_COLOR, "generator loss")):
        _raw_and_smooth(ax, steps, history.column(name), color, name)
        _epoch_lines(ax, history)
        ax.set_title(title)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy(history, path):
    """Top: D(x) and D(G(z)). Bottom: D's accuracy on real and on fake images, and G's success rate."""
    fig, axes = new_figure(2, 1, figsize=(8, 6), sharex=True)
    steps = _steps(history)
    for name, color, label in (("d_real", "tab:green", "D(x), real"), ("d_fake", "tab:red", "D(G(z)), fake")):
        _raw_and_smooth(axes[0], steps, history.column(name), color, label)
    axes[0].set_title("discriminator output")
    axes[0].set_ylabel("mean D output")
    for name, color, label in (("d_acc_real", "tab:green", "D accuracy on real"),
                               ("d_acc_fake", "tab:red", "D accuracy on fake"),
                               ("g_success", G_COLOR, "G success (fakes called real)")):
        values = history.column(name)
        axes[1].plot(steps, moving_average(values, _window(len(values))), color=color, linewidth=1.4, label=label)
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].set_title(f"accuracy and success (mean of {_window(len(history))} steps)")
    axes[1].set_ylabel("fraction")
    axes[1].set_xlabel("step")
    for ax in axes:
        _epoch_lines(ax, history)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_balance(history, path):
    """The balancing decisions: a tick per step where D (top row) or G (bottom row) trained, and the
    fraction of recent steps in which each trained."""
    fig, axes = new_figure(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    steps = _steps(history)
    train_d, train_g = history.column("train_d"), history.column("train_g")
    for row, values, color, label in ((1, train_d, D_COLOR, "D trained"), (0, train_g, G_COLOR, "G trained")):
        on = steps[values > 0.5]
        axes[0].scatter(on, np.full(on.shape, row), marker="|", s=60, color=color, linewidths=0.8)
    axes[0].set_yticks([0, 1], ["G", "D"])
    axes[0].set_ylim(-0.6, 1.6)
    axes[0].set_title(f"balancing decisions: D trained {int(np.nansum(train_d))} of {len(history)} steps, "
                      f"G {int(np.nansum(train_g))}")
    window = max(1, _window(len(history)))
    axes[1].plot(steps, moving_average(train_d, window), color=D_COLOR, label="D trained")
    axes[1].plot(steps, moving_average(train_g, window), color=G_COLOR, label="G trained", linestyle="--")
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].set_ylabel(f"fraction (last {window} steps)")
    axes[1].set_xlabel("step")
    axes[1].legend(loc="lower right", fontsize=8)
    for ax in axes:
        _epoch_lines(ax, history)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_throughput(history, path):
    """Images per second at every step, with each epoch's mean."""
    fig, ax = new_figure(figsize=(8, 3.5))
    steps = _steps(history)
    rate = history.column("images_per_sec")
    ax.plot(steps, rate, color="tab:purple", alpha=0.4, linewidth=0.8, label="per step")
    epochs = history.column("epoch")
    for epoch in np.unique(epochs[np.isfinite(epochs)]):
        mask = (epochs == epoch) & np.isfinite(rate)
        if mask.any():
            mean = rate[mask].mean()
            ax.hlines(mean, steps[mask].min(), steps[mask].max(), color="tab:purple", linewidth=2)
            ax.annotate(f"{mean:.0f}/s", (steps[mask].mean(), mean), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=8)
    _epoch_lines(ax, history)
    ax.set_title("throughput (epoch means as thick lines)")
    ax.set_xlabel("step")
    ax.set_ylabel("images / second")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


PLOTS = {"losses": plot_losses, "accuracy": plot_accuracy, "balance": plot_balance, "throughput": plot_throughput}


def plot_all(history, folder):
    """Every plot of PLOTS as folder/<name>.png; returns {name: path}. Needs at least one record."""
    if not len(history):
        raise ValueError("plot_all: the history is empty (no step has run)")
    folder = Path(folder)
    return {name: plot(history, folder / f"{name}.png") for name, plot in PLOTS.items()}
