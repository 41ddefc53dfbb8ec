"""Dictionary learning: sparse autoencoders (TopK, BatchTopK), their training, metrics and features."""

from .io import load_sae, save_sae
from .model import Sae, SaeConfig, SaeOutput
from .train import SaeTrainConfig, train_sae

__all__ = ["Sae", "SaeConfig", "SaeOutput", "SaeTrainConfig", "load_sae", "save_sae", "train_sae"]
