"""Layers shared by several model families. Family-specific layers live in the family's file."""
from .drop import DropPath, drop_path
from .mlp import Mlp
from .ops import ConvBNReLU, map_to_tokens, resize, tokens_to_map
from .pos_embed import resample_abs_pos_embed
from .weight_init import init_linear_norm, init_vit_weights, trunc_normal_

__all__ = ["DropPath", "drop_path", "Mlp", "ConvBNReLU", "map_to_tokens", "resize", "tokens_to_map",
           "resample_abs_pos_embed", "init_linear_norm", "init_vit_weights", "trunc_normal_"]
