from .registry import (PaperInfo, create_backbone, create_model, list_backbones, list_models, model_info,
                       register_backbone, register_model)
from .segmentor import Segmentor

__all__ = ["PaperInfo", "create_backbone", "create_model", "list_backbones", "list_models", "model_info",
           "register_backbone", "register_model", "Segmentor"]
