"""vitseg: semantic segmentation with Vision Transformers."""
from .errors import CheckpointError, ConfigError, DataError, TrainingError, VitsegError
from .models import (Segmentor, create_backbone, create_model, list_backbones, list_models, model_info)
from .weights import load_checkpoint, save_weights

__version__ = "0.1.0"
__all__ = ["create_model", "create_backbone", "list_models", "list_backbones", "model_info", "Segmentor",
           "load_checkpoint", "save_weights", "VitsegError", "ConfigError", "DataError", "CheckpointError",
           "TrainingError", "__version__"]
