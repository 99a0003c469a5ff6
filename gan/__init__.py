"""GANs built from nnbox layers: models, losses, balancing rules, the trainer, metrics and plots."""
from .losses import get_gan_loss
from .tricks import InstanceNoise, LabelPolicy, sample_latent
from .balance import Decision, StepStats, get_balance_rule
from .models import (DCGANDiscriminator, DCGANGenerator, FacesDiscriminator, FacesGenerator,
                     MLPDiscriminator, MLPGenerator, build_gan)
from .trainer import GANTrainer, NonFiniteLossError, TrainConfig
from .aegan import AEGANConfig, AEGANNetworks, AEGANTrainer, build_aegan
from .cyclegan import CycleGANConfig, CycleGANTrainer, ImageTranslator, PatchDiscriminator, cycle_consistency_loss
from .gradient_penalty import gradient_penalty
from .vae import VAE
