"""Position-embedding resampling."""
import torch
import torch.nn.functional as F


def resample_abs_pos_embed(pos: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int] | None = None,
                           num_prefix_tokens: int = 0, mode: str = "bicubic") -> torch.Tensor:
    """Resize a [1, prefix + h*w, C] learned position table to a new grid (bicubic, align_corners=False).

    Prefix tokens (class / distillation) are kept as they are.
    """
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    n, c = grid.shape[1], grid.shape[2]
    if old_size is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"cannot infer the grid of a position table with {n} tokens; pass old_size")
        old_size = (side, side)
    # While tracing for export, always take the resize path (an identity at the same size) so that the
    # exported graph stays correct for other input sizes.
    if tuple(old_size) == tuple(new_size) and not torch.jit.is_tracing():
        return pos
    grid = grid.reshape(1, old_size[0], old_size[1], c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_size), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], c).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)
