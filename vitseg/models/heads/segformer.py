"""SegFormer: Mix Transformer encoder + All-MLP decoder.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021.
Key names mirror the official code (decode_head.linear_c{k}.proj, linear_fuse.{conv,bn}, linear_pred);
converters for the HF transformers layouts (hub files and the v5 in-memory names) live at the end.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ...layers import ConvBNReLU, map_to_tokens, resize, tokens_to_map
from ..backbones.mit import MixTransformer, mit
from ..registry import PaperInfo, register_model
from ..segmentor import Segmentor


class MLPProjection(nn.Module):
    """Per-token linear projection of one encoder stage (official name: linear_c{k}.proj)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(cin, dim)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of F.interpolate(mode="bilinear", align_corners=False, size=...) on one axis."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = src - i0
    return i0, (i0 + 1).clamp(max=n_in - 1), 1 - w1, w1


def bilinear_resize_matrix(sizes: list[tuple[int, int]], size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """Sparse CSR matrix M with M @ cat_k(tokens_k) = Σ_k bilinear_resize(map_k, size), as tokens.

    tokens_k are [B, h_k*w_k, D] row-major maps stacked over k then over the batch (block-diagonal in B),
    so M has shape [B*H*W, B*Σ h_k*w_k] and at most 4 non-zeros per row and stage.
    """
    big_h, big_w = size
    rows, cols, vals = [], [], []
    pixel, offset = torch.arange(big_h * big_w), 0
    for h, w in sizes:
        y0, y1, wy0, wy1 = _bilinear_axis(h, big_h)
        x0, x1, wx0, wx1 = _bilinear_axis(w, big_w)
        for ys, wy in ((y0, wy0), (y1, wy1)):
            for xs, wx in ((x0, wx0), (x1, wx1)):
                rows.append(pixel)
                cols.append((offset + ys[:, None] * w + xs[None, :]).flatten())
                vals.append((wy[:, None] * wx[None, :]).flatten())
        offset += h * w
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    shift = torch.arange(batch)[:, None]
    index = torch.stack([(rows + shift * big_h * big_w).flatten(), (cols + shift * offset).flatten()])
    with warnings.catch_warnings():  # "sparse support is in beta" / "invariant checks disabled"
        warnings.simplefilter("ignore", UserWarning)
        m = torch.sparse_coo_tensor(index, vals.repeat(batch), (batch * big_h * big_w, batch * offset))
        return m.coalesce().float().to_sparse_csr()


def _sparse_ok(x: torch.Tensor) -> bool:
    """The sparse resize-and-sum runs in plain eager fp32/fp64 only. Compilers and exporters (torch.compile,
    torch.export, the TorchScript ONNX exporter) get F.interpolate, which they know and fuse; dispatch modes
    such as the FLOP counter get it too, so counts stay those of the dense graph (interpolation = 0 FLOPs)."""
    return (x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not is_in_torch_dispatch_mode())


def _csr32(m: torch.Tensor) -> torch.Tensor:
    """CSR with int32 indices (what the MKL/cuSPARSE kernels take; int64 would be converted on every call)."""
    m = m.to_sparse_csr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(m.crow_indices().int(), m.col_indices().int(), m.values(), m.shape)


class _SparseAddmm(torch.autograd.Function):
    """x += m @ y in place, with the transposed matrix given up front (autograd would re-transpose per call)."""

    @staticmethod
    def forward(ctx, x, m, y, m_t):
        ctx.m_t = m_t
        ctx.mark_dirty(x)
        return x.addmm_(m, y)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, ctx.m_t @ grad if ctx.needs_input_grad[2] else None, None


class SegFormerHead(nn.Module):
    """All-MLP decoder: project each stage to D, upsample to 1/4, concatenate [c4,c3,c2,c1], fuse, classify.

    The fuse is a 1×1 conv, i.e. linear per pixel, and bilinear upsampling is linear per channel, so the two
    commute: each stage's slice of the fuse weights is folded into its projection and applied at the stage's
    own resolution before upsampling. Same function, a fraction of the work; at inference the BatchNorm is
    folded in as well. `fused=False` runs the paper's literal graph (used to count the paper's FLOPs and to
    test that both graphs agree).
    """

    fused = True

    def __init__(self, in_channels, dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.in_channels, self.dim = tuple(in_channels), dim
        for k, c in enumerate(self.in_channels):
            setattr(self, f"linear_c{k + 1}", MLPProjection(c, dim))
        self.linear_fuse = ConvBNReLU(len(self.in_channels) * dim, dim, 1, bias=False)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)
        self._resize_matrices: dict = {}  # (batch, sizes, ...) -> sparse resize matrix; not state

    def __getstate__(self):
        # The cache is rebuilt on demand; leaving it out keeps deepcopy/pickle working (sparse CSR tensors
        # cannot be deep-copied).
        return {**self.__dict__, "_resize_matrices": {}}

    def stage_weights(self, fold_bn: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
        """Per-stage (weight [D, C_k], bias [D]) of fuse∘projection; with fold_bn also the BN affine."""
        n, d = len(self.in_channels), self.dim
        fuse = self.linear_fuse.conv.weight.flatten(1)  # [D, n*D], input order [c_n, ..., c_1]
        ws, bs = [], []
        for k in range(n):
            part = fuse[:, (n - 1 - k) * d:(n - k) * d]
            proj = getattr(self, f"linear_c{k + 1}").proj
            ws.append(part @ proj.weight)
            bs.append(part @ proj.bias)
        shift = None
        if fold_bn:
            bn = self.linear_fuse.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            ws = [w * scale[:, None] for w in ws]
            bs = [b * scale for b in bs]
            shift = bn.bias - bn.running_mean * scale
        return ws, bs, shift

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if not self.fused:
            return self.forward_literal(feats)
        fold_bn = not self.training
        ws, bs, shift = self.stage_weights(fold_bn)
        if fold_bn:  # a constant commutes with bilinear upsampling: fold the BN shift into the finest stage
            bs[0] = bs[0] + shift
        b, size = feats[0].shape[0], feats[0].shape[-2:]
        # Token-major (channels-last) throughout, so every product is a plain GEMM on contiguous channels.
        x = F.linear(map_to_tokens(feats[0]), ws[0], bs[0])
        coarse = [F.linear(map_to_tokens(feats[k]), ws[k], bs[k]) for k in range(1, len(feats))]
        if coarse:
            x = self._upsample_add(x, coarse, [tuple(f.shape[-2:]) for f in feats[1:]], tuple(size))
        x = tokens_to_map(x, size)
        x = self.dropout(F.relu(x if fold_bn else self.linear_fuse.bn(x), inplace=True))
        # Classifier as one batched GEMM whose output is already contiguous [B, K, H*W] (no layout copy).
        pred = self.linear_pred
        k = pred.out_channels
        w = pred.weight.view(1, k, -1).expand(b, -1, -1)
        out = torch.baddbmm(pred.bias.view(1, k, 1), w, map_to_tokens(x).transpose(1, 2))
        return out.view(b, k, *size)

    def _upsample_add(self, x: torch.Tensor, coarse: list[torch.Tensor], sizes: list[tuple[int, int]],
                      size: tuple[int, int]) -> torch.Tensor:
        """x + Σ_k bilinear_resize(coarse_k) on [B, N, D] tokens.

        Bilinear resizing is a fixed sparse matrix (≤ 4 weights per output pixel), so the resizes of all
        coarse stages and their sum are one sparse × dense product: a single pass over the full-resolution
        map instead of one resize and one add per stage. Under torch.compile, or for dtypes the sparse
        kernels lack, the same sum is taken with F.interpolate (see `_sparse_ok`).
        """
        b, d = x.shape[0], x.shape[2]
        if _sparse_ok(x):
            key = (b, tuple(sizes), size, x.dtype, x.device)
            mats = self._resize_matrices.get(key)
            if mats is None:
                m = bilinear_resize_matrix(sizes, size, b)
                mats = tuple(_csr32(a).to(device=x.device, dtype=x.dtype) for a in (m, m.t()))
                self._resize_matrices = dict(list(self._resize_matrices.items())[-3:] + [(key, mats)])
            y = torch.cat(coarse, 1).view(-1, d)
            return _SparseAddmm.apply(x.view(-1, d), mats[0], y, mats[1]).view(b, -1, d)
        for y, hw in zip(coarse, sizes):
            x = x + map_to_tokens(resize(tokens_to_map(y, hw), size))
        return x

    def forward_literal(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Paper Eq. (1)-(4) as written: project, upsample, concatenate [c4..c1], fuse, classify."""
        size = feats[0].shape[-2:]
        ups = []
        for k in reversed(range(len(feats))):
            y = getattr(self, f"linear_c{k + 1}").proj(feats[k].flatten(2).transpose(1, 2))
            y = y.transpose(1, 2).reshape(y.shape[0], self.dim, *feats[k].shape[-2:])
            ups.append(resize(y, size))
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(ups, dim=1))))


class SegFormer(Segmentor):
    def __init__(self, backbone: MixTransformer, num_classes: int = 150, decoder_dim: int = 256,
                 dropout: float = 0.1, **kw):
        super().__init__(num_classes, **kw)
        self.backbone = backbone
        self.decode_head = SegFormerHead(backbone.out_channels, decoder_dim, num_classes, dropout)


def segformer(variant: str, num_classes: int = 150, decoder_dim: int | None = None, dropout: float = 0.1,
              **backbone_kw) -> SegFormer:
    dim = decoder_dim or (256 if variant in ("b0", "b1") else 768)
    return SegFormer(mit(variant, **backbone_kw), num_classes, dim, dropout)


_MIOU = {  # Table 1a, single scale: ADE20K, Cityscapes val, COCO-Stuff
    "b0": (37.4, 76.2, 35.6), "b1": (42.2, 78.5, 40.2), "b2": (46.5, 81.0, 44.6),
    "b3": (49.4, 81.7, 45.5), "b4": (50.3, 82.3, 46.5), "b5": (51.0, 82.4, 46.7)}


def _paper(v: str, params: float, gflops: float, size: int = 512) -> PaperInfo:
    ade, cs, coco = _MIOU[v]
    return PaperInfo(params_m=params, gflops=gflops, input_size=(size, size), num_classes=150,
                     miou={"ade20k": ade, "cityscapes": cs, "coco_stuff164k": coco},
                     source="SegFormer Tables 1-2 (ADE20K; GFLOPs are multiply-accumulates)")


@register_model(paper=_paper("b0", 3.8, 8.4))
def segformer_b0(**kw): return segformer("b0", **kw)


@register_model(paper=_paper("b1", 13.7, 15.9))
def segformer_b1(**kw): return segformer("b1", **kw)


@register_model(paper=_paper("b2", 27.5, 62.4))
def segformer_b2(**kw): return segformer("b2", **kw)


@register_model(paper=_paper("b3", 47.3, 79.0))
def segformer_b3(**kw): return segformer("b3", **kw)


@register_model(paper=_paper("b4", 64.1, 95.7))
def segformer_b4(**kw): return segformer("b4", **kw)


@register_model(paper=_paper("b5", 84.7, 183.3, 640))
def segformer_b5(**kw): return segformer("b5", **kw)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint layouts. Ours = official (mmseg) names. HF hub files use the transformers 4.x names; HF v5
# renames them in memory (stages/blocks/q_proj/...), so both are accepted.

_HF_V5_TO_V4 = [  # applied in order to a v5 in-memory name
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"), (r"attention\.o_proj", "attention.output.dense"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"mlp\.fc1", "mlp.dense1"), (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"), (r"layernorm_after", "layer_norm_2"),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
]

_HF_V4_TO_OURS = [
    (r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.norm."),
    (r"^encoder\.patch_embeddings\.(\d+)\.proj\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.proj."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}."),
    (r"^encoder\.layer_norm\.(\d+)\.", lambda m: f"backbone.norm{int(m[1]) + 1}."),
    (r"^decode_head\.linear_c\.(\d+)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}."),
    (r"^decode_head\.linear_fuse\.weight$", "decode_head.linear_fuse.conv.weight"),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
]
_HF_BLOCK_RENAMES = [("attention.self.query", "attn.q"), ("attention.output.dense", "attn.proj"),
                     ("attention.self.sr", "attn.sr"), ("attention.self.layer_norm", "attn.norm"),
                     ("layer_norm_1", "norm1"), ("layer_norm_2", "norm2"),
                     ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2")]


def is_hf_segformer(state_dict) -> bool:
    return any(re.match(r"^(segformer\.)?(encoder\.block|stages\.\d+\.blocks)\.", k) for k in state_dict)


def convert_hf_segformer(state_dict: dict) -> dict:
    """HF transformers SegFormer (4.x files or v5 names; with or without the `segformer.` prefix) -> ours."""
    out, kv = {}, {}
    for key, value in state_dict.items():
        k = key[len("segformer."):] if key.startswith("segformer.") else key
        if k.startswith("classifier."):  # SegformerForImageClassification head
            continue
        for pat, rep in _HF_V5_TO_V4:
            k = re.sub(pat, rep, k)
        for pat, rep in _HF_V4_TO_OURS:
            k = re.sub(pat, rep, k)
        if ".block" in k:
            m = re.search(r"attention\.self\.(key|value)\.(weight|bias)$", k)
            if m:  # HF keeps separate key/value projections; ours is the official fused kv
                kv.setdefault(k[:m.start()] + f"attn.kv.{m[2]}", {})[m[1]] = value
                continue
            for a, b in _HF_BLOCK_RENAMES:
                k = k.replace(a, b)
        out[k] = value
    for k, parts in kv.items():
        out[k] = torch.cat([parts["key"], parts["value"]], 0)
    return out


def to_hf_segformer(state_dict: dict) -> dict:
    """Ours -> HF transformers 4.x file layout (used by tests and `vitseg convert --to hf`)."""
    out = {}
    for key, value in state_dict.items():
        k = key
        m = re.match(r"backbone\.patch_embed(\d)\.(proj|norm)\.(.*)", k)
        if m:
            sub = "proj" if m[2] == "proj" else "layer_norm"
            out[f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.{sub}.{m[3]}"] = value
            continue
        m = re.match(r"backbone\.block(\d)\.(\d+)\.(.*)", k)
        if m:
            prefix, rest = f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}.", m[3]
            if rest.startswith("attn.kv."):
                c = value.shape[0] // 2
                kind = rest.split(".")[-1]
                out[prefix + f"attention.self.key.{kind}"] = value[:c]
                out[prefix + f"attention.self.value.{kind}"] = value[c:]
                continue
            for a, b in _HF_BLOCK_RENAMES:
                rest = rest.replace(b, a) if rest.startswith(b) or f".{b}" in rest else rest
            out[prefix + rest] = value
            continue
        m = re.match(r"backbone\.norm(\d)\.(.*)", k)
        if m:
            out[f"segformer.encoder.layer_norm.{int(m[1]) - 1}.{m[2]}"] = value
            continue
        m = re.match(r"decode_head\.linear_c(\d)\.(.*)", k)
        if m:
            out[f"decode_head.linear_c.{int(m[1]) - 1}.{m[2]}"] = value
            continue
        k = k.replace("decode_head.linear_fuse.conv.weight", "decode_head.linear_fuse.weight")
        k = k.replace("decode_head.linear_fuse.bn.", "decode_head.batch_norm.")
        k = k.replace("decode_head.linear_pred.", "decode_head.classifier.")
        out[k] = value
    return out


def checkpoint_filter_fn(state_dict, model, source):
    """Detect the layout (ours/official mmseg, HF, ImageNet MiT encoder) and convert it to ours."""
    from ...weights import Converted
    if is_hf_segformer(state_dict):
        sd = convert_hf_segformer(state_dict)
        layout = "hf-transformers"
    elif any(k.startswith("backbone.") for k in state_dict):
        sd = {k: v for k, v in state_dict.items() if not k.startswith("decode_head.conv_seg.")}
        layout = "official-mmseg"  # conv_seg is created by mmseg's base head but never used
    elif any(k.startswith("block1.") for k in state_dict):
        sd = {"backbone." + k: v for k, v in state_dict.items() if not k.startswith("head.")}
        return Converted(sd, allow_missing=("decode_head.",), layout="official-mit-imagenet")
    else:
        return Converted(dict(state_dict), layout="unknown")
    if not any(k.startswith("decode_head.") for k in sd):  # an HF SegformerModel (encoder only)
        return Converted(sd, allow_missing=("decode_head.",), layout=layout + "-encoder")
    return Converted(sd, layout=layout)


def config_from_checkpoint(source) -> dict:
    """HF SegFormer uses LayerNorm eps 1e-5 at every site (its config's layer_norm_eps is unused by the
    modeling code), so an HF checkpoint is rebuilt with norm_eps=1e-5; class count and decoder width are
    read from the tensors / config."""
    sd = source.state_dict
    cfg = {}
    if is_hf_segformer(sd) or source.config is not None and source.config.get("model_type") == "segformer":
        cfg["norm_eps"] = 1e-5
    if source.config:
        c = source.config
        if "decoder_hidden_size" in c and any("decode_head" in k for k in sd):
            cfg["decoder_dim"] = c["decoder_hidden_size"]
        if "drop_path_rate" in c:
            cfg["drop_path_rate"] = c["drop_path_rate"]
        if "classifier_dropout_prob" in c:
            cfg["dropout"] = c["classifier_dropout_prob"]
    for key in ("decode_head.classifier.weight", "decode_head.linear_pred.weight"):
        if key in sd:
            cfg["num_classes"] = sd[key].shape[0]
            cfg["decoder_dim"] = sd[key].shape[1]
    return cfg
