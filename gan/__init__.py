"""GANs built from nnbox layers: models, losses, balancing rules, the trainer, metrics and plots."""
