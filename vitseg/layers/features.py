"""The one feature interface of every backbone (MiT, ViT/DeiT/hybrids, BEiT, CSWin).

    feats = backbone.forward_intermediates(images, indices=None, norm=False, fmt="NCHW", prefix=False)

- `indices`: 0-based block indices counted across all blocks (negative: from the end), or "embed" for the
  stem + position-embedding output (plain ViTs). Default: the blocks behind `backbone.out_indices`. The result
  has one entry per index, in the order given; only the blocks up to the deepest index run.
- Outputs are block outputs *before* any final norm. `norm=True` applies the final norm to the last block's
  output only (plain ViTs); pyramids apply each stage's own norm to the output of a stage's last block.
- `fmt="NCHW"` gives maps [B, C, h, w]; `fmt="NLC"` gives tokens [B, N, C]. `prefix=True` keeps the class /
  distillation tokens: first in the sequence for NLC, as a second tuple element (map, prefix [B, P, C]) for NCHW.
- `backbone(images)` equals `forward_intermediates(images)`; `backbone.feature_info` lists, per default output,
  {"index": block index, "channels": C, "stride": s} for necks and heads.

Pyramid backbones keep `out_indices` as *stage* numbers (0..3, their configs' convention);
`stage_end_blocks()` names the global block index each stage ends with.
"""
from __future__ import annotations

from ..errors import ConfigError

EMBED = "embed"
FORMATS = ("NCHW", "NLC")


def check_indices(indices, depth: int, owner: str, allow_embed: bool = False) -> tuple:
    """Normalise feature indices to 0-based block numbers (negative ones count from the end); keep "embed"
    where the backbone has a single-resolution stem output. Out-of-range or empty requests are ConfigErrors."""
    if isinstance(indices, (int, str)):
        indices = (indices,)
    out = []
    for i in indices:
        if i == EMBED and allow_embed:
            out.append(EMBED)
            continue
        if isinstance(i, bool) or not isinstance(i, int):
            allowed = "block numbers" + (' or "embed"' if allow_embed else "")
            raise ConfigError(f"{owner}: feature index {i!r} is not valid (use {allowed})")
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ConfigError(f"{owner}: feature index {i} is outside its {depth} blocks "
                              f"(valid: 0..{depth - 1}, or -1..-{depth} from the end)")
        out.append(j)
    if not out:
        raise ConfigError(f"{owner}: no feature index given: name at least one block")
    return tuple(out)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"feature format must be one of {FORMATS}, got {fmt!r}")


def deepest(indices: tuple) -> int:
    """Number of blocks to run for these indices ("embed" needs none)."""
    return max((i + 1 for i in indices if i != EMBED), default=0)


def format_tokens(x, hw: tuple[int, int], num_prefix: int, fmt: str, prefix: bool):
    """A plain-ViT token sequence [B, P + h·w, C] in the requested format (see the module docstring)."""
    from .ops import tokens_to_map
    if fmt == "NLC":
        return x if prefix else x[:, num_prefix:]
    grid = tokens_to_map(x[:, num_prefix:], hw)
    return (grid, x[:, :num_prefix]) if prefix else grid
