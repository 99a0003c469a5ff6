"""Input validation shared by the layers: errors that name the layer and both shapes."""
import numbers


def is_whole_number(value):
    """True for 3, np.int64(3) and 3.0; False for 2.5, "3", None and booleans (int() would truncate
    2.5 to 2 without a word, and fail on "same" with a message that names no argument)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()


def check_grad(layer, dy, expected_shape):
    """Raise ValueError unless dy, the gradient handed to layer.backward, has the forward output's shape."""
    if tuple(getattr(dy, "shape", ())) != tuple(expected_shape) or not hasattr(dy, "ndim"):
        raise ValueError(f"{type(layer).__name__}.backward expects dy shaped like the forward output "
                         f"{tuple(expected_shape)}, got shape {tuple(getattr(dy, 'shape', ()))}")


def check_array(layer, x):
    """Raise TypeError unless x is an array (NumPy or CuPy: anything with ndim)."""
    if not hasattr(x, "ndim"):
        raise TypeError(f"{type(layer).__name__} expects an array, got {type(x).__name__}")


def check_input(layer, x, ndim, channels=None, channel_axis=1, what=None, unit="channels"):
    """Raise ValueError unless x has `ndim` dimensions (and `channels` at `channel_axis`).

    `what` describes the expected layout, e.g. "(N, C, H, W)"; `unit` names what axis
    `channel_axis` counts ("features" for Linear).
    """
    check_array(layer, x)
    name, shape = type(layer).__name__, tuple(x.shape)
    layout = f" {what}" if what else ""
    if x.ndim != ndim:
        raise ValueError(f"{name} expects a {ndim}-D input{layout}, got shape {shape}")
    if channels is not None and shape[channel_axis] != channels:
        expected = list(shape)
        expected[channel_axis] = channels
        raise ValueError(
            f"{name} expects {channels} {unit} at axis {channel_axis}: input shape {tuple(expected)} "
            f"with that axis = {channels}, got shape {shape}"
        )
