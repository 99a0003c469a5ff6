"""Linear (fully connected) layer: y = x W^T + b."""
from nnbox import init
from nnbox.module import Module, Parameter

from ._checks import check_grad, check_input, is_whole_number


class Linear(Module):
    """Applies y = x W^T + b.

    Args:
        in_features: size of each input row.
        out_features: size of each output row.
        bias: learn an additive bias (default True).
        rng: NumPy generator or seed for the initial weights (PyTorch's default scheme).
        dtype: of the parameters (float32).

    Shape:
        x: (N, in_features) -> y: (N, out_features)

    Backward, with dy = dL/dy:
        dW += dy^T x,  db += sum_n dy,  dx = dy W
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=init.DEFAULT_DTYPE):
        super().__init__()
        for label, value in (("in_features", in_features), ("out_features", out_features)):
            if not is_whole_number(value) or value < 1:
                raise ValueError(f"Linear: {label} must be an integer >= 1, got {value!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        weight, bias_data = init.default_weight_and_bias(
            (self.out_features, self.in_features), self.in_features, self.out_features if bias else None, rng, dtype)
        self.weight = Parameter(weight)
        self.bias = Parameter(bias_data) if bias else None

    def forward(self, x):
        check_input(self, x, 2, self.in_features, what="(N, in_features)", unit="features")
        self.save_for_backward(x=x)
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        self.backward_parameters(dy)
        return dy @ self.weight.data

    def backward_parameters(self, dy):
        """dW and db only (no dy W product)."""
        x = self.saved_for_backward().x
        check_grad(self, dy, (x.shape[0], self.out_features))
        if self.weight.requires_grad:
            self.weight.grad += dy.T @ x
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dy.sum(axis=0)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
