"""gan.classifier.MNISTClassifier's own backward (the layers in reverse, the flatten undone on the
gradient): a float64 gradient check of the whole network, input and every parameter (200 random
entries of each: the first linear layer alone has 400,000)."""
import numpy as np

from gan.classifier import MNISTClassifier
from nnbox.gradcheck import gradcheck


def test_gradcheck_of_the_whole_classifier(rng):
    model = MNISTClassifier(rng=1).to(np.float64)
    x = rng.uniform(-1, 1, (2, 1, 28, 28))
    report = gradcheck(model, x, rng=rng, max_entries=200)
    names = {name for name, _ in model.named_parameters()}
    assert {f"parameter '{name}'" for name in names} <= set(report.checked_entries)
    assert report.checked_entries["input 0"] == 200 and len(names) == 8
