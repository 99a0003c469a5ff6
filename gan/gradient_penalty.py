"""WGAN-GP's gradient penalty (Gulrajani et al. 2017) with its exact gradient for the critic's weights.

The Wasserstein critic D must be 1-Lipschitz. Instead of clipping its weights, WGAN-GP penalises
the norm of its input gradient on points between the real and the fake samples:

    x_hat_i = eps_i x_real_i + (1 - eps_i) x_fake_i,      eps_i ~ U[0, 1], ONE per sample
    g_i     = grad_x D(x_hat_i)                            (the first backward, dy = 1 per sample)
    P       = lam * (1/N) sum_i (||g_i||_2 - 1)^2

P depends on the weights theta through g, i.e. through D's backward pass; its gradient dP/dtheta is
computed exactly by a double backward (layers/second_order.py), no finite differences:

    ddx_i = dP/dg_i = (2 lam / N) (||g_i|| - 1) g_i / ||g_i||       (0 where g_i = 0)

is sent through the backward's backward of every layer, in forward order, which adds dP/dtheta into
each parameter's grad. Each sample's gradient is its own only when D mixes no samples (no BatchNorm).
"""
import numpy as np

from layers import second_order
from nnbox.backend import as_rng, device_of, draw_dtype, get_array_module, is_gpu_generator, to_device

from .models import _Network

second_order.register_container(_Network, lambda network: [network.main])


def interpolate(real, fake, rng):
    """(x_hat, eps): x_hat = eps real + (1 - eps) fake with eps (N, 1, ..., 1) ~ U[0, 1), one per sample.

    eps is drawn by `rng`: a NumPy generator (or a seed) draws the N numbers on the host, and they
    are moved to real's device; a CuPy generator (what GANTrainer passes on the GPU, derived from
    its NumPy one) draws them on the device, so a training step copies nothing to it.
    """
    if tuple(real.shape) != tuple(fake.shape):
        raise ValueError(f"gradient_penalty: real and fake batches must have the same shape, got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    if is_gpu_generator(rng):
        eps = rng.random(shape, dtype=draw_dtype(real.dtype)).astype(real.dtype, copy=False)
    else:
        eps = to_device(as_rng(rng).random(shape).astype(real.dtype), device_of(real))
    return eps * real + (1 - eps) * fake, eps


def input_gradient(critic, x):
    """(layers, g, received): the critic's chain of layers, g = grad_x sum_i D(x_i) (N, ...), and the
    upstream gradient each layer received. No parameter gradient is added (the weights are frozen
    for this backward)."""
    layers = second_order.chain(critic)   # before the forward: an unsupported layer fails fast
    out = critic(x)
    xp = get_array_module(out)
    flags = [p.requires_grad for p in critic.parameters()]
    critic.requires_grad_(False)
    try:
        g, received = second_order.backward_recording(layers, xp.ones_like(out))
    finally:
        for param, flag in zip(critic.parameters(), flags):
            param.requires_grad = flag
    return layers, g, received


def penalty_terms(critic, real, fake, lam=10.0, rng=None):
    """Everything P needs, without touching any gradient: a dict with "value" (0-d P), "norms" (N,)
    ||g_i||, "ddx" (dP/dg, shaped like g), "eps" (N, 1, ..., 1), and the chain's "layers" and
    "received" (for the double backward)."""
    x_hat, eps = interpolate(real, fake, rng)
    layers, g, received = input_gradient(critic, x_hat)
    xp = get_array_module(g)
    n = g.shape[0]
    norms = xp.sqrt((g * g).reshape(n, -1).sum(axis=1))
    gap = norms - 1
    per_sample = (n,) + (1,) * (g.ndim - 1)
    # d||g||/dg = g / ||g||, taken as 0 at g = 0; divided before scaling: (2 lam / n) / tiny overflows
    unit = g / xp.maximum(norms, np.finfo(g.dtype).tiny).reshape(per_sample)
    ddx = ((2 * lam / n) * gap).astype(g.dtype).reshape(per_sample) * unit
    return {"value": lam * (gap * gap).mean(), "norms": norms, "eps": eps, "layers": layers,
            "received": received, "ddx": ddx}


def gradient_penalty(critic, real, fake, lam=10.0, rng=None):
    """Compute P (module docstring) and ADD its exact gradient into the critic's parameter grads.

    Args:
        critic: a Module made of layers with a double backward (layers/second_order.py): Linear,
            Conv2d, (Leaky)ReLU, MaxPool2d, Dropout, Flatten, Reshape, Tanh, Sigmoid, in Sequential
            containers or gan.models networks. Its forward on x_hat overwrites what its layers saved.
        real, fake: (N, C, H, W) batches (fake is a plain array: no gradient flows into G).
        lam: the penalty weight (10 in the paper).
        rng: NumPy Generator or seed for eps.

    Returns:
        (value, stats): value the 0-d array P on the critic's device; stats a dict of 0-d arrays,
        "gp" (P), "grad_norm" (mean ||g_i||), "grad_norm_min", "grad_norm_max".
    """
    terms = penalty_terms(critic, real, fake, lam, rng)
    second_order.chain_double_backward(terms["layers"], terms["received"], terms["ddx"])
    critic.clear_saved()
    norms = terms["norms"]
    stats = {"gp": terms["value"], "grad_norm": norms.mean(), "grad_norm_min": norms.min(),
             "grad_norm_max": norms.max()}
    return terms["value"], stats
