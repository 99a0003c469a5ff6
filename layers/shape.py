"""Shape layers: Flatten and Reshape. They move no data (a reshape of a contiguous array is a view);
backward reshapes dy back to the input's shape."""
import math

from nnbox.module import Module

from ._checks import check_array, check_grad


class _ShapeLayer(Module):
    """What Flatten and Reshape share: y = x reshaped to `_output_shape(x.shape)`, dx = dy reshaped back."""

    def forward(self, x):
        check_array(self, x)
        output_shape = self._output_shape(tuple(x.shape))
        self.save_for_backward(input_shape=tuple(x.shape), output_shape=output_shape)
        return x.reshape(output_shape)

    def backward(self, dy):
        saved = self.saved_for_backward()
        check_grad(self, dy, saved.output_shape)
        return dy.reshape(saved.input_shape)

    def _output_shape(self, input_shape):
        raise NotImplementedError


class Flatten(_ShapeLayer):
    """Flattens the dimensions start_dim..end_dim into one (as torch.nn.Flatten).

    Args:
        start_dim: the first dimension to flatten (default 1: keep the batch dimension).
        end_dim: the last dimension to flatten (default -1: the last one).

    Shape:
        x: (N, *rest) -> y: (N, prod(rest)) with the defaults; in general the dimensions
        start_dim..end_dim are replaced by their product.

    Backward: dx = dy reshaped to x's shape.
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def _output_shape(self, shape):
        ndim = len(shape)
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not (0 <= start < ndim and 0 <= end < ndim) or start > end:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) cannot flatten dimensions "
                f"{self.start_dim}..{self.end_dim} of a {ndim}-D input: expected at least "
                f"{max(self.start_dim, self.end_dim, -min(self.start_dim, self.end_dim) - 1) + 1} dimensions "
                f"with start_dim before end_dim, got shape {tuple(shape)}")
        return tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Reshape(_ShapeLayer):
    """Reshapes each sample to `shape`, keeping the batch dimension: (N, ...) -> (N, *shape).

    Args:
        *shape: the per-sample shape, as integers (Reshape(64, 4, 4)) or one tuple
            (Reshape((64, 4, 4))); at most one entry may be -1, inferred from the sample size.

    Shape:
        x: (N, *in_shape) -> y: (N, *shape), with prod(in_shape) = prod(shape).

    Backward: dx = dy reshaped to x's shape.
    """

    def __init__(self, *shape):
        super().__init__()
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not shape:
            raise ValueError("Reshape needs a target shape per sample, e.g. Reshape(64, 4, 4)")
        shape = tuple(int(size) for size in shape)
        if sum(size == -1 for size in shape) > 1 or any(size < -1 or size == 0 for size in shape):
            raise ValueError(f"Reshape{shape}: sizes must be positive, with at most one -1 to infer")
        self.shape = shape

    def _output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Reshape expects an input (N, ...) with a batch dimension, got shape {input_shape}")
        n, sample_size = input_shape[0], math.prod(input_shape[1:])
        known = math.prod(size for size in self.shape if size != -1)
        target = "(N, " + ", ".join(map(str, self.shape)) + ")"
        if -1 in self.shape:
            if sample_size % known:
                raise ValueError(
                    f"Reshape to {target} needs a sample size divisible by {known}, got shape "
                    f"{tuple(input_shape)} ({sample_size} values per sample)")
            shape = tuple(sample_size // known if size == -1 else size for size in self.shape)
        else:
            shape = self.shape
            if sample_size != known:
                raise ValueError(
                    f"Reshape to {target} expects inputs with {known} values per sample, e.g. shape "
                    f"(N, {known}), got shape {tuple(input_shape)} ({sample_size} values per sample)")
        return (n,) + shape

    def extra_repr(self):
        return ", ".join(map(str, self.shape))
