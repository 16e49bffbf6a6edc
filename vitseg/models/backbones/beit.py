"""BEiT encoder (B/16, L/16) as used for segmentation: per-block relative position bias, layer scale.

Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022; segmentation set-up of the official
microsoft/unilm `beit/semantic_segmentation` code (no absolute position embedding, one relative-position table
per block, no final norm). Parameter names follow the official/timm layout (`blocks.N.attn.q_bias`, `gamma_1`,
...), so official and timm files load without renames; HF transformers and mmseg layouts are converted at the
end of this file.

Relative-position tables are stored for one window (the `img_size // patch_size` grid). For another grid they
are resized with `rel_pos_resize`:
- "geometric" (default): the unilm segmentation recipe — source offsets placed on a geometric progression,
  tensor-product cubic spline (not-a-knot, = scipy RectBivariateSpline(kx=ky=3, s=0)); each axis handled on its
  own so non-square grids work. A grid smaller than the table keeps the exact central offsets (a crop).
- "bilinear": what HF transformers' BeitModel does on every forward (align_corners=False).
The resize runs once at load time (checkpoint grid -> model window, with a notice) and at run time whenever
the input grid differs from the stored window. The cls rows (last 3) are never resized.
"""
from __future__ import annotations

import functools
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from ...layers.features import EMBED, check_format, check_indices, deepest, format_tokens
from ..registry import PaperInfo, register_backbone

NUM_CLS_ENTRIES = 3  # table rows appended after the patch offsets: cls->token, token->cls, cls->cls
REL_POS_RESIZE_MODES = ("geometric", "bilinear")


# ---------------------------------------------------------------------------------------------------------------
# Relative position index and table resizing


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """[1+N, 1+N] indices into a table of (2gh-1)(2gw-1)+3 rows for a gh×gw patch grid plus one cls token."""
    gh, gw = grid
    rows = (2 * gh - 1) * (2 * gw - 1) + NUM_CLS_ENTRIES
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = torch.empty(gh * gw + 1, gh * gw + 1, dtype=torch.long)
    index[1:, 1:] = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
    index[0, :] = rows - 3   # cls as query
    index[:, 0] = rows - 2   # cls as key
    index[0, 0] = rows - 1   # cls to cls
    return index


def geometric_ratio(src: int, dst: int) -> float:
    """Ratio q with 1 + q + ... + q^(src//2 - 1) ≈ dst//2, by the bisection of unilm's checkpoint.py."""
    n, target = src // 2, dst // 2

    def gsum(q: float) -> float:
        return (1.0 - q ** n) / (1.0 - q)

    lo, hi = 1.01, 1.5
    while gsum(hi) <= target:  # only for grids far beyond the recipe's range (> ~390 patches)
        hi *= 2.0
    q = lo
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if gsum(q) > target:
            hi = q
        else:
            lo = q
    return q


def geometric_coords(src: int, dst: int) -> list[float]:
    """Source offsets for a table side of `src`, spread geometrically so the outermost lands near ±dst//2."""
    q = geometric_ratio(src, dst)
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0.0] + dis


@functools.lru_cache(maxsize=64)
def _cubic_spline_matrix(x: tuple[float, ...], t: tuple[float, ...]) -> np.ndarray:
    """W [len(t), len(x)] with W @ y = not-a-knot cubic spline through (x, y) evaluated at t (float64).

    Points outside [x0, xn] are clamped to the ends (FITPACK's evaluation rule). Fewer than 4 nodes: the
    interpolating polynomial (which is what the not-a-knot spline reduces to). Built in NumPy so that it is a
    constant for tracing/ONNX export.
    """
    xs = np.asarray(x, dtype=np.float64)
    ts = np.clip(np.asarray(t, dtype=np.float64), xs[0], xs[-1])
    n = len(xs)
    if n < 4:
        w = np.ones((len(ts), n))
        for j in range(n):
            for m in range(n):
                if m != j:
                    w[:, j] *= (ts - xs[m]) / (xs[j] - xs[m])
        return w
    h = np.diff(xs)
    # Second derivatives M = S @ y from the interior C2 conditions plus not-a-knot at both ends.
    a, b = np.zeros((n, n)), np.zeros((n, n))
    i = np.arange(1, n - 1)
    a[i, i - 1], a[i, i], a[i, i + 1] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
    b[i, i - 1], b[i, i], b[i, i + 1] = 6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]
    a[0, :3] = h[1], -(h[0] + h[1]), h[0]
    a[-1, -3:] = h[-1], -(h[-2] + h[-1]), h[-2]
    s = np.linalg.solve(a, b)
    seg = np.clip(np.searchsorted(xs, ts, side="right") - 1, 0, n - 2)
    hs, left, right = h[seg], xs[seg + 1] - ts, ts - xs[seg]
    rows = np.arange(len(ts))
    w = np.zeros((len(ts), n))
    w[rows, seg] += left / hs
    w[rows, seg + 1] += right / hs
    w += ((left ** 3 / (6 * hs) - left * hs / 6)[:, None] * s[seg]
          + (right ** 3 / (6 * hs) - right * hs / 6)[:, None] * s[seg + 1])
    return w


@functools.lru_cache(maxsize=64)
def _geometric_axis_matrix(src: int, dst: int) -> np.ndarray:
    """Linear map from `src` table offsets to `dst` offsets along one axis (float32)."""
    if dst <= src:  # the small grid's offsets all exist in the table: keep them exactly
        start = (src - dst) // 2
        return np.eye(src, dtype=np.float32)[start:start + dst]
    half = dst // 2
    targets = tuple(float(v) for v in range(-half, half + 1))
    return _cubic_spline_matrix(tuple(geometric_coords(src, dst)), targets).astype(np.float32)


def resize_rel_pos_table(table: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                         mode: str = "geometric") -> torch.Tensor:
    """Resize a [(2sh-1)(2sw-1)+3, heads] relative-position table to a dst_grid window (cls rows kept)."""
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid == dst_grid:
        return table
    if mode not in REL_POS_RESIZE_MODES:
        raise ConfigError(f"rel_pos_resize='{mode}' is unknown; use one of {REL_POS_RESIZE_MODES}")
    sh, sw = 2 * src_grid[0] - 1, 2 * src_grid[1] - 1
    dh, dw = 2 * dst_grid[0] - 1, 2 * dst_grid[1] - 1
    heads = table.shape[1]
    if table.shape[0] != sh * sw + NUM_CLS_ENTRIES:
        raise ConfigError(f"a relative-position table of {table.shape[0]} rows does not belong to a "
                          f"{src_grid[0]}x{src_grid[1]} window ({sh * sw + NUM_CLS_ENTRIES} rows)")
    with torch.autocast(table.device.type, enabled=False):  # tiny op; keep it in full precision
        sub = table[:-NUM_CLS_ENTRIES].float().reshape(sh, sw, heads)
        if mode == "bilinear":
            new = F.interpolate(sub.permute(2, 0, 1)[None], size=(dh, dw), mode="bilinear",
                                align_corners=False)[0].permute(1, 2, 0)
        else:
            # torch.tensor(list): a plain constant for tracing/ONNX export (from_numpy is not exportable)
            mh = torch.tensor(_geometric_axis_matrix(sh, dh).tolist(), device=sub.device)
            mw = torch.tensor(_geometric_axis_matrix(sw, dw).tolist(), device=sub.device)
            new = torch.einsum("ij,jkh,lk->ilh", mh, sub, mw)
        new = new.reshape(dh * dw, heads).to(table.dtype)
    return torch.cat([new, table[-NUM_CLS_ENTRIES:]], dim=0)


def table_window(rows: int, key: str = "relative_position_bias_table") -> tuple[int, int]:
    """Square window a table of `rows` rows was made for ((2W-1)^2 + 3 rows)."""
    side = math.isqrt(max(rows - NUM_CLS_ENTRIES, 0))
    if side * side != rows - NUM_CLS_ENTRIES or side % 2 == 0:
        raise CheckpointError(f"{key}: {rows} rows is not (2W-1)^2+3 for any window W; is this a BEiT "
                              "relative-position table?")
    return (side + 1) // 2, (side + 1) // 2


# ---------------------------------------------------------------------------------------------------------------
# Model


class BeitAttention(nn.Module):
    """Multi-head self-attention with q/v biases (no k bias) and an optional per-block relative position bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, window: tuple[int, int] | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.window = tuple(window) if window else None
        self.relative_position_bias_table = (
            nn.Parameter(torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1) + NUM_CLS_ENTRIES, num_heads))
            if window else None)
        self.proj = nn.Linear(dim, dim)

    def relative_bias(self, grid: tuple[int, int], index: torch.Tensor, mode: str) -> torch.Tensor:
        """[1, heads, 1+N, 1+N] additive attention bias for a gh×gw grid."""
        table = resize_rel_pos_table(self.relative_position_bias_table, self.window, grid, mode)
        n = index.shape[0]
        return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class BeitBlock(nn.Module):
    """Pre-norm block: x + DropPath(γ1·Attn(LN(x))), x + DropPath(γ2·MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
                 layer_scale_init: float | None, norm_eps: float, window: tuple[int, int] | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = BeitAttention(dim, num_heads, qkv_bias, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale_init:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), bias)
        x = x + self.drop_path(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + self.drop_path(m if self.gamma_2 is None else self.gamma_2 * m)


class Beit(nn.Module):
    """BEiT encoder returning block outputs as [B, C, H/p, W/p] maps (cls dropped, no final norm).

    Inputs of any size are zero-padded bottom/right to a multiple of the patch size (mmseg 'corner' padding);
    the maps cover the padded grid ceil(H/p) × ceil(W/p).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, layer_scale_init: float | None = 0.1, drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6, use_rel_pos_bias: bool = True, use_abs_pos_emb: bool = False,
                 rel_pos_resize: str = "geometric", out_indices=(3, 5, 7, 11)):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if rel_pos_resize not in REL_POS_RESIZE_MODES:
            raise ConfigError(f"rel_pos_resize='{rel_pos_resize}' is unknown; use one of {REL_POS_RESIZE_MODES}")
        self.embed_dim, self.patch_size, self.depth, self.num_heads = embed_dim, patch_size, depth, num_heads
        self.num_prefix_tokens = 1
        self.out_indices = check_indices(out_indices, depth, "BEiT")
        self.out_channels = [embed_dim] * len(self.out_indices)
        self.window_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.rel_pos_resize = rel_pos_resize

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = (nn.Parameter(torch.zeros(1, 1 + self.window_size[0] * self.window_size[1], embed_dim))
                          if use_abs_pos_emb else None)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace(0, rate, depth)
        window = self.window_size if use_rel_pos_bias else None
        self.blocks = nn.ModuleList(
            BeitBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], layer_scale_init, norm_eps, window)
            for i in range(depth))
        self._index_cache: dict = {}
        self._init_weights()

    def _init_weights(self) -> None:
        """trunc-normal(0.02) Linears with zero bias, LN (1, 0), cls/pos trunc-normal; then unilm's fix_init."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        with torch.no_grad():  # deeper blocks start with smaller residual branches
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    def _rel_index(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (grid, str(device))
        if key not in self._index_cache:
            if len(self._index_cache) > 16:
                self._index_cache.clear()
            self._index_cache[key] = relative_position_index(grid).to(device)
        return self._index_cache[key]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad to the patch multiple, patchify, prepend cls, add the (resized) absolute table if any."""
        p = self.patch_size
        pad_h, pad_w = (-images.shape[2]) % p, (-images.shape[3]) % p
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = self.patch_embed.proj(images)
        grid = (x.shape[2], x.shape[3])
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        if self.pos_embed is not None:
            x = x + resample_abs_pos_embed(self.pos_embed, grid, self.window_size, num_prefix_tokens=1)
        return x, grid

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of an input size: ceil(H/p) × ceil(W/p) (inputs are padded bottom/right)."""
        return -(-height // self.patch_size), -(-width // self.patch_size)

    @property
    def feature_info(self) -> list[dict]:
        return [{"index": i, "channels": self.embed_dim, "stride": self.patch_size} for i in self.out_indices]

    def forward_intermediates(self, images: torch.Tensor, indices=None, norm: bool = False, fmt: str = "NCHW",
                              prefix: bool = False) -> list:
        """Outputs of the requested blocks (contract: vitseg/layers/features.py). The segmentation BEiT has no
        final norm (unilm drops it), so `norm=True` is refused rather than ignored."""
        check_format(fmt)
        if norm:
            raise ConfigError("BEiT as a segmentation encoder has no final norm; call with norm=False")
        indices = self.out_indices if indices is None else check_indices(indices, self.depth, "BEiT",
                                                                         allow_embed=True)
        x, grid = self.embed(images)
        found = {EMBED: x} if EMBED in indices else {}
        run = deepest(indices)
        index = self._rel_index(grid, x.device) if run and self.blocks[0].attn.window else None
        for i, blk in enumerate(self.blocks[:run]):
            bias = blk.attn.relative_bias(grid, index, self.rel_pos_resize) if index is not None else None
            x = blk(x, bias)
            if i in indices:
                found[i] = x
        return [format_tokens(found[i], grid, self.num_prefix_tokens, fmt, prefix) for i in indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_intermediates(images)

    def layer_id(self, name: str) -> int:
        """Depth index for layer-wise lr decay (BEiT rule): embeddings 0, blocks.i -> i+1, rest num_layers."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed.", "mask_token")):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        return int(m[1]) + 1 if m else self.num_layers

    @property
    def num_layers(self) -> int:
        return self.depth + 1


BEIT_SETTINGS = {  # embed_dim, depth, heads, layer-scale init (seg configs), drop path (seg configs)
    "b16": (768, 12, 12, 0.1, 0.1),
    "l16": (1024, 24, 16, 1e-6, 0.2),
}
DEFAULT_OUT_INDICES = {"b16": (3, 5, 7, 11), "l16": (7, 11, 15, 23)}


def beit(variant: str, **kwargs) -> Beit:
    dim, depth, heads, ls_init, dpr = BEIT_SETTINGS[variant]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, layer_scale_init=ls_init, drop_path_rate=dpr,
                out_indices=DEFAULT_OUT_INDICES[variant])
    args.update(kwargs)
    if "depth" in kwargs and "out_indices" not in kwargs:  # reduced-depth variants: keep indices in range
        args["out_indices"] = tuple(i for i in args["out_indices"] if i < args["depth"]) or (args["depth"] - 1,)
    return Beit(patch_size=16, **args)


@register_backbone(paper=PaperInfo(params_m=86.0, input_size=(224, 224), num_classes=0,
                                   source="BEiT (Bao et al., ICLR 2022): BEiT-B, ViT-B/16 size"))
def beit_b16(**kw): return beit("b16", **kw)


@register_backbone(paper=PaperInfo(params_m=304.0, input_size=(224, 224), num_classes=0,
                                   source="BEiT (Bao et al., ICLR 2022): BEiT-L, ViT-L/16 size"))
def beit_l16(**kw): return beit("l16", **kw)


# ---------------------------------------------------------------------------------------------------------------
# Weight import: official unilm / timm (= ours), HF transformers (v4 files, v5 in-memory names), mmseg

# Parts of BEiT checkpoints that the segmentation encoder does not use (pretraining heads, classifiers,
# final norms, the unilm UperNet adapter and heads of seg checkpoints).
_UNUSED = re.compile(r"^(mask_token|ln1\.|lm_head\.|head\.|norm\.|fc_norm\.|pooler\.|layernorm\.|classifier\.|"
                     r"fpn\d\.|fpn\.|decode_head\.|auxiliary_head\.|neck\.)|relative_position_index$")

_HF_RENAMES = [  # (pattern, replacement) applied after the `beit.` prefix is gone; v5 names first
    (r"^layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.relative_position_bias\.", r"blocks.\1.attn."),
    (r"^layers\.(\d+)\.mlp\.fc(\d)\.", r"blocks.\1.mlp.fc\2."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"^shared_position_bias\.", "rel_pos_bias."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.relative_position_bias\.", r"blocks.\1.attn."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^encoder\.relative_position_bias\.", "rel_pos_bias."),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.(cls_token|mask_token)$", r"\1"),
    (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
    (r"\.lambda_(\d)$", r".gamma_\1"),
]
_MMSEG_RENAMES = [
    (r"^layers\.(\d+)\.ln(\d)\.", r"blocks.\1.norm\2."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
]


def detect_layout(state_dict: dict) -> str:
    keys = list(state_dict)
    if any(k.startswith(("encoder.layer.", "embeddings.patch_embeddings", "beit.")) or
           re.match(r"layers\.\d+\.attention\.q_proj\.", k) for k in keys):
        return "hf-transformers"
    if any(re.match(r"layers\.\d+\.ln1\.", k) or k.startswith("patch_embed.projection.") for k in keys):
        return "mmseg"
    return "official"


def _fuse_hf_qkv(sd: dict) -> dict:
    """blocks.N.attn.{query,key,value|q,k,v}.* (separate HF projections) -> qkv.weight + q_bias/v_bias."""
    out, parts = {}, {}
    for k, v in sd.items():
        m = re.match(r"(blocks\.\d+\.attn\.)(query|key|value|q|k|v)\.(weight|bias)$", k)
        if m is None:
            out[k] = v
            continue
        which = m[2][0]  # q / k / v
        if m[3] == "weight":
            parts.setdefault(m[1], {})[which] = v
        elif which == "k":
            out[k] = v  # BEiT has no key bias: left for the strict check to report
        else:
            out[f"{m[1]}{which}_bias"] = v
    for prefix, p in parts.items():
        if set(p) != {"q", "k", "v"}:
            raise CheckpointError(f"{prefix}: query/key/value weights incomplete in the checkpoint "
                                  f"(found {sorted(p)})")
        out[prefix + "qkv.weight"] = torch.cat([p["q"], p["k"], p["v"]], 0)
    return out


def convert_to_internal(state_dict: dict) -> tuple[dict, str, list[str]]:
    """Any supported BEiT layout -> our key names. Returns (state dict, layout name, dropped key names)."""
    sd = dict(state_dict)
    if any(k.startswith("backbone.") for k in sd):  # a segmentation checkpoint: keep the encoder
        sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    if any(k.startswith("beit.") for k in sd):  # HF task models (classification, segmentation, MIM)
        sd = {k[len("beit."):] if k.startswith("beit.") else k: v for k, v in sd.items()}
    layout = detect_layout(sd)
    renames = _HF_RENAMES if layout == "hf-transformers" else _MMSEG_RENAMES if layout == "mmseg" else []
    out, dropped = {}, []
    for key, value in sd.items():
        k = key
        for pat, rep in renames:
            k = re.sub(pat, rep, k)
        if _UNUSED.search(k):
            dropped.append(key)
            continue
        out[k] = value
    if layout == "hf-transformers":
        out = _fuse_hf_qkv(out)
    return out, layout, dropped


def checkpoint_filter_fn(state_dict, model: Beit, source):
    """Convert a BEiT checkpoint to ours: shared table -> per-block copies, tables/pos-embed resized to the
    model's window (with a notice), unused parts (heads, final norms, adapters) dropped with a notice."""
    from ...weights import Converted
    sd, layout, dropped = convert_to_internal(state_dict)
    notes = []
    if dropped:
        groups = sorted({"relative_position_index" if k.endswith("relative_position_index")
                         else re.sub(r"^(backbone|beit)\.", "", k).split(".")[0] for k in dropped})
        notes.append(f"ignored {len(dropped)} tensors the encoder does not use ({', '.join(groups)})")
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:
        if model.blocks[0].attn.window is None:
            sd["rel_pos_bias.relative_position_bias_table"] = shared  # reported by the strict check
        else:
            for i in range(model.depth):
                sd.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
            notes.append(f"copied the shared relative-position table into each of the {model.depth} blocks")
    resized = []
    for i, blk in enumerate(model.blocks):
        key = f"blocks.{i}.attn.relative_position_bias_table"
        table, own = sd.get(key), blk.attn.relative_position_bias_table
        if table is None or own is None or table.shape == own.shape or table.shape[1] != own.shape[1]:
            continue
        src = table_window(table.shape[0], key)
        sd[key] = resize_rel_pos_table(table.float(), src, model.window_size, model.rel_pos_resize).to(table.dtype)
        resized.append(src)
    if resized:
        src = resized[0]
        notes.append(f"resized relative-position tables of {len(resized)} blocks from a {src[0]}x{src[1]} to a "
                     f"{model.window_size[0]}x{model.window_size[1]} window ({model.rel_pos_resize})")
    pos = sd.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape \
            and pos.shape[-1] == model.pos_embed.shape[-1]:
        side = math.isqrt(pos.shape[1] - 1)
        sd["pos_embed"] = resample_abs_pos_embed(pos.float(), model.window_size, (side, side), 1).to(pos.dtype)
        notes.append(f"resized the absolute position embedding from {side}x{side} to "
                     f"{model.window_size[0]}x{model.window_size[1]} (bicubic)")
    return Converted(sd, layout=f"beit-{layout}", notes=notes)


def config_from_checkpoint(source) -> dict:
    """Settings a BEiT checkpoint implies: window (img_size), LN eps, layer scale, q/v bias, abs/rel position.

    Architecture sizes (width, depth, heads) are not changed here: a mismatch is reported by the strict load.
    HF folders also select rel_pos_resize="bilinear", the resize HF BeitModel applies on every forward, so an
    imported HF model reproduces HF outputs at any input size.
    """
    cfg: dict = {}
    c = source.config or {}
    if c.get("model_type") == "beit":
        if c.get("patch_size", 16) != 16:
            raise CheckpointError(f"{source.path}: patch size {c['patch_size']}; the BEiT backbones here use 16")
        cfg.update(img_size=c.get("image_size", 224), norm_eps=c.get("layer_norm_eps", 1e-12),
                   layer_scale_init=c.get("layer_scale_init_value", 0.1) or None,
                   use_abs_pos_emb=bool(c.get("use_absolute_position_embeddings", False)),
                   use_rel_pos_bias=bool(c.get("use_relative_position_bias", False)
                                         or c.get("use_shared_relative_position_bias", False)),
                   rel_pos_resize="bilinear", qkv_bias=True)
        return cfg
    sd, layout, _ = convert_to_internal(source.state_dict)
    if layout == "hf-transformers":
        cfg["rel_pos_resize"] = "bilinear"
    proj = sd.get("patch_embed.proj.weight")
    patch = proj.shape[-1] if proj is not None else 16
    tables = [v for k, v in sd.items() if k.endswith("relative_position_bias_table")]
    cfg["use_rel_pos_bias"] = bool(tables)
    cfg["use_abs_pos_emb"] = "pos_embed" in sd
    if tables:
        window = table_window(tables[0].shape[0])
        cfg["img_size"] = window[0] * patch
    elif "pos_embed" in sd:
        cfg["img_size"] = math.isqrt(sd["pos_embed"].shape[1] - 1) * patch
    if not any(k.endswith(".gamma_1") for k in sd):
        cfg["layer_scale_init"] = None  # trained without layer scale; otherwise the file holds the values
    cfg["qkv_bias"] = any(k.endswith(".q_bias") for k in sd)
    return cfg
