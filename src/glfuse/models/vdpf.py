"""VDPF: Vision-Dual-Path Fusion for lesion staging (MICCAI 2024).

Reference: "VDPF" (MICCAI 2024) -- a ViT encoder, shared between a *global* path (the whole slice I_G) and a *local* path
(I_L = I_G x box-mask), a Global-Local Fusion Module (GLFM: per-path self-attention + a local-to-global / global-to-local
cross-attention block, eqs. 1-3) and a Feature-Fusion Filter Network (FFFN) that re-weights the concatenated token features
before a mean-pool classification head. glfuse implements the *paper* as fixed in ``shared/specs/vdpf.md`` ("Decisions for
glfuse -- the model", 1-8); the official code (``my_model2``) differs and is only followed where the paper is silent.
Every deviation from paper or official code is named in a comment at the line that makes it.

Our reading of FFFN (the paper only gives prose; this is the concrete network glfuse builds)::

    X = F_C                                  [B, T, D]   (T = k*N tokens, k = number of selected streams)
    z_T = mean_D(X)  [B, T];  z_D = mean_T(X)  [B, D]
    z   = concat[z_T, z_D]                   [B, 1, T+D] (one 1-channel sequence)
    h   = GELU(BN(Conv1d(1->16, k3)(z)));  h_T, h_D = split(h, [T, D])       [B,16,T], [B,16,D]
    W_T = Conv1d(16->1, k3)(h_T);  W_D = Conv1d(16->1, k3)(h_D)             ("two vector types")
    W  <- W + Conv1d(1->1, k3)(LN(W))        (normalisation + convolution + residual; LN over the length)
    out = X * sigmoid(W_T)[:, :, None] * sigmoid(W_D)[:, None, :]

Shared encoder and per-branch maps (Grad-CAM / attention views)
----------------------------------------------------------------
The encoder is one module. For speed it runs **once on the concatenated batch** ``[I_G; I_L]`` (2B images) -- identical
math to two calls, since nothing in the encoder mixes samples -- and its output is split into F_G (first B) and F_L (last
B); an encoder with BatchNorm (``vdpf_resnet``) is called twice in training mode instead, so each path keeps its own
batch statistics. Each half then passes through its own identity "tap" module, ``model.tap_global`` /
``model.tap_local``, so ordinary forward/backward hooks see exactly one branch each: ``model.cam_layers()`` returns
``{"global": tap_global, "local": tap_local}`` (token maps [B, N, D]; ``glfuse.cam.grad_cam`` takes them as they are,
with ``forward=lambda m, x: m(x, box_mask)``); ``model.tokens_to_map(t)`` turns [B, N, D] into [B, D, h, w] on the
encoder's token grid (``model.token_grid``). ``model.branch_tokens(image, box_mask)`` returns both maps directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from glfuse.layers.attention import Attention as SharedAttention
from glfuse.layers.attention import Mlp, attend, merge_heads, split_heads
from glfuse.layers.attention import PatchEmbed as SharedPatchEmbed
from glfuse.models._registry import read_state_dict, register_model

__all__ = [
    "FEATURES",
    "FFFN",
    "GLFM",
    "VDPF",
    "Attention",
    "Block",
    "CoordinateAttention",
    "CrossAttentionBlock",
    "Mlp",
    "MultiHeadCrossAttention",
    "PatchEmbed",
    "ResNetEncoder",
    "ViTEncoder",
    "vdpf",
    "vdpf_ca",
    "vdpf_cat",
    "vdpf_resnet",
    "vdpf_sc",
]

FEATURES = ("global", "local", "cross")  # F_GS, F_LS, F_Cross, in concatenation order
_FUSIONS = ("fffn", "ca", "none")
_ENCODERS = ("vit", "resnet")


# ---------------------------------------------------------------------------------------------------------------------
# ViT-B/16 encoder (decision 1)
# ---------------------------------------------------------------------------------------------------------------------
class PatchEmbed(SharedPatchEmbed):
    """Non-overlapping patch embedding: Conv2d(k=s=patch) -> [B, N, D] tokens (no norm: ViT)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768) -> None:
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        super().__init__(in_chans, embed_dim, patch_size, norm=False, flatten=True)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]


class Attention(SharedAttention):
    """Multi-head self-attention (fused qkv projection, ``F.scaled_dot_product_attention``, scale head_dim**-0.5 as
    the official explicit softmax(QK^T)V; same maths, fewer passes)."""

    def __init__(self, dim: int, num_heads: int = 12, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)


class Block(nn.Module):
    """Pre-norm ViT block: x + Attn(LN(x)), x + MLP(LN(x)); LN eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViT-B/16-style encoder without class token: returns all N = (img/patch)^2 tokens [B, N, D] after a final LN.

    Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``pos_embed``, ``blocks.i.*``, ``norm``) so a
    local timm ViT weights file can initialise it (see :meth:`VDPF.load_encoder_weights`).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.num_tokens = self.patch_embed.num_patches
        # No class token (official backbone mode builds an unused one; we do not build it).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # Dropout / drop-path are 0 in the official backbone and are not built. Its 1000-way head is unused: not built.
        self._init_weights()

    def _init_weights(self) -> None:
        # timm ViT default: Linear trunc-normal(.02)/bias 0, LN 1/0, pos-embed trunc-normal(.02), patch conv PyTorch default.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        return self.norm(self.blocks(x))


class ResNetEncoder(nn.Module):
    """ResNet-50 encoder (MONAI) for Resnet-DPF: final 2048-channel map -> 1x1 conv to D -> tokens + learned pos-embed."""

    def __init__(self, img_size: int = 224, in_chans: int = 1, embed_dim: int = 768) -> None:
        super().__init__()
        from monai.networks.nets import resnet50

        if img_size % 32:
            raise ValueError(f"img_size {img_size} is not divisible by 32 (ResNet-50 stride)")
        # Standard ImageNet-style ResNet-50 stem (7x7 stride-2 conv + max-pool) and bias-free downsampling; MONAI's
        # defaults (stride-1 stem, biased downsample) are for 3-D MedicalNet. Never pretrained here (no downloads).
        self.resnet = resnet50(
            pretrained=False,
            spatial_dims=2,
            n_input_channels=in_chans,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,
        )
        self.resnet.avgpool = nn.Identity()  # unused: we take the map before pooling
        self.proj = nn.Conv2d(2048, embed_dim, kernel_size=1)
        self.embed_dim = embed_dim
        self.grid_size = (img_size // 32, img_size // 32)
        self.num_tokens = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.act(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed


# ---------------------------------------------------------------------------------------------------------------------
# GLFM (decision 3)
# ---------------------------------------------------------------------------------------------------------------------
class MultiHeadCrossAttention(nn.Module):
    """Multi-head attention with separate Q (from the query stream) and K/V (from the context stream) projections."""

    def __init__(self, dim: int, num_heads: int = 12) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        # Q/K/V without bias, output projection with bias: the official choice (the paper is silent).
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.num_heads
        q, k, v = split_heads(self.wq(query), h), split_heads(self.wk(context), h), split_heads(self.wv(context), h)
        # Unlike the official CrossAttention (which splits cat[query, kv] in half), query and context may differ in length.
        return self.proj(merge_heads(attend(q, k, v)))


class CrossAttentionBlock(nn.Module):
    """Paper eqs. (1)-(3): x-to-y attention, MLP, then y-to-x attention; returns F_Cross (shape of ``y``).

    With ``x = F_LS`` and ``y = F_G`` (the paper):
      F_LG    = LN(MHA(q=F_LS, kv=F_G) + F_LS)                 (1)  local-to-global
      F_LGM   = LN(F_LG + Linear2(GELU(Linear1(F_LG))))        (2)
      F_Cross = LN(MHA(q=F_G, kv=F_LGM) + F_G)                 (3)  global-to-local
    ``vdpf_sc`` calls it with the roles swapped (x = F_GS, y = F_L).
    """

    def __init__(self, dim: int, num_heads: int = 12, mlp_hidden: int = 2048) -> None:
        super().__init__()
        self.attn_xy = MultiHeadCrossAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)  # post-norm LNs (eps 1e-5): official choice, the paper shows none
        # GELU per paper eq. (2) (official: ReLU); hidden 2048 per the official code (the paper is silent).
        self.mlp = Mlp(dim, mlp_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_yx = MultiHeadCrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)
        # Official FAB: an extra self-attention (no residual) before eq. (1) and an outer LN after eq. (3): not built --
        # the paper feeds F_LS itself into eq. (1) and shows no outer LN (decision 3).

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xy = self.norm1(self.attn_xy(x, y) + x)  # (1)
        xym = self.norm2(xy + self.mlp(xy))  # (2)
        return self.norm3(self.attn_yx(y, xym) + y)  # (3)


class GLFM(nn.Module):
    """Global-Local Fusion Module: F_GS, F_LS (self-attention + residual + LN) and F_Cross, concatenated on tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 12,
        mlp_hidden: int = 2048,
        features: Sequence[str] = FEATURES,
        swap_cross: bool = False,
    ) -> None:
        super().__init__()
        self.features = tuple(features)
        self.swap_cross = swap_cross
        cross = "cross" in self.features
        # Build only what the selected features need, so no parameter is left without a gradient (DDP-safe).
        self.need_gs = "global" in self.features or (cross and swap_cross)
        self.need_ls = "local" in self.features or (cross and not swap_cross)
        # Self-attention qkv without bias, proj with bias: official Attention_ori (the paper is silent).
        self.sa_global = Attention(dim, num_heads, qkv_bias=False) if self.need_gs else None
        # Post-norm LayerNorm after each self-attention residual: the official choice (the paper is silent).
        self.norm_global = nn.LayerNorm(dim) if self.need_gs else None
        self.sa_local = Attention(dim, num_heads, qkv_bias=False) if self.need_ls else None
        self.norm_local = nn.LayerNorm(dim) if self.need_ls else None
        self.cross = CrossAttentionBlock(dim, num_heads, mlp_hidden) if cross else None

    def forward(self, f_g: torch.Tensor, f_l: torch.Tensor) -> torch.Tensor:
        out: dict[str, torch.Tensor] = {}
        if self.need_gs:
            out["global"] = self.norm_global(f_g + self.sa_global(f_g))
        if self.need_ls:
            # One F_LS, used both in the cross block and in the concatenation (the official code computes a third one).
            out["local"] = self.norm_local(f_l + self.sa_local(f_l))
        if self.cross is not None:
            out["cross"] = self.cross(out["global"], f_l) if self.swap_cross else self.cross(out["local"], f_g)
        # Order F_GS, F_LS, F_Cross (spec decision 3; the official code concatenates F_GS, F_Cross, F_LS).
        return torch.cat([out[k] for k in FEATURES if k in self.features], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Fusion heads (decisions 4 and 6)
# ---------------------------------------------------------------------------------------------------------------------
class FFFN(nn.Module):
    """Feature-Fusion Filter Network: token and channel gates in (0, 1) from pooled F_C (see module docstring)."""

    def __init__(self, num_tokens: int, dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.num_tokens, self.dim = num_tokens, dim
        self.conv_in = nn.Conv1d(1, hidden, 3, padding=1)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.GELU()
        self.conv_t = nn.Conv1d(hidden, 1, 3, padding=1)
        self.conv_d = nn.Conv1d(hidden, 1, 3, padding=1)
        self.norm_t = nn.LayerNorm(num_tokens)
        self.refine_t = nn.Conv1d(1, 1, 3, padding=1)
        self.norm_d = nn.LayerNorm(dim)
        self.refine_d = nn.Conv1d(1, 1, 3, padding=1)
        self.last_gates: tuple[torch.Tensor, torch.Tensor] | None = None  # (a_T [B,T], a_D [B,D]) of the last call

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token gate a_T [B, T] and channel gate a_D [B, D], both sigmoid outputs."""
        _, t, d = x.shape
        if (t, d) != (self.num_tokens, self.dim):
            raise ValueError(f"FFFN built for [*, {self.num_tokens}, {self.dim}] features, got {tuple(x.shape)}")
        z = torch.cat([x.mean(dim=2), x.mean(dim=1)], dim=1).unsqueeze(1)  # [B, 1, T + D]
        h = self.act(self.bn(self.conv_in(z)))
        w_t = self.conv_t(h[..., :t])
        w_d = self.conv_d(h[..., t:])
        w_t = w_t + self.refine_t(self.norm_t(w_t))
        w_d = w_d + self.refine_d(self.norm_d(w_d))
        return torch.sigmoid(w_t).squeeze(1), torch.sigmoid(w_d).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_t, a_d = self.gates(x)
        self.last_gates = (a_t.detach(), a_d.detach())
        return x * a_t.unsqueeze(2) * a_d.unsqueeze(1)


class CoordinateAttention(nn.Module):
    """Coordinate Attention (Hou et al., CVPR 2021) on a [B, C, H, W] map; reduction 32, min 8 hidden channels."""

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        pooled_h = x.mean(dim=3, keepdim=True)  # [B, C, H, 1]
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # [B, C, W, 1]
        y = self.act(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))  # [B, C, H, 1]
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))  # [B, C, 1, W]
        return x * a_h * a_w


class _TokenCoordinateAttention(nn.Module):
    """Coordinate Attention on F_C laid out as a [B, D, k*gh, gw] map (the k token grids stacked vertically)."""

    def __init__(self, dim: int, grid_size: tuple[int, int], num_streams: int, reduction: int = 32) -> None:
        super().__init__()
        self.grid_size, self.num_streams = grid_size, num_streams
        self.ca = CoordinateAttention(dim, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        gh, gw = self.grid_size
        m = x.transpose(1, 2).reshape(b, d, self.num_streams * gh, gw)
        return self.ca(m).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# VDPF
# ---------------------------------------------------------------------------------------------------------------------
class VDPF(nn.Module):
    """VDPF: shared encoder on (I_G, I_L = I_G x box_mask) -> GLFM -> FFFN -> mean-pool -> LN -> Linear."""

    def __init__(
        self,
        num_classes: int = 3,
        img_size: int = 224,
        in_chans: int = 1,
        features: Iterable[str] = FEATURES,
        fusion: str = "fffn",
        swap_cross: bool = False,
        encoder: str = "vit",
        encoder_weights: str | Path | None = None,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        cross_mlp_hidden: int = 2048,
        fffn_hidden: int = 16,
        ca_reduction: int = 32,
    ) -> None:
        super().__init__()
        if isinstance(features, str):
            features = (features,)
        feats = tuple(features)
        bad = [f for f in feats if f not in FEATURES]
        if bad or not feats or len(set(feats)) != len(feats):
            raise ValueError(f"features must be a non-empty subset of {FEATURES} without repeats, got {feats!r}")
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}")
        if encoder not in _ENCODERS:
            raise ValueError(f"encoder must be one of {_ENCODERS}, got {encoder!r}")
        if swap_cross and "cross" not in feats:
            raise ValueError("swap_cross=True needs 'cross' in features")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.features = tuple(f for f in FEATURES if f in feats)  # canonical order F_GS, F_LS, F_Cross
        self.fusion = fusion
        self.swap_cross = swap_cross
        self.in_chans = in_chans
        self.img_size = img_size
        self.embed_dim = embed_dim

        if encoder == "vit":
            self.encoder: nn.Module = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        else:
            self.encoder = ResNetEncoder(img_size, in_chans, embed_dim)
        self._encoder_has_batchnorm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.encoder.modules()
        )
        self.token_grid: tuple[int, int] = self.encoder.grid_size
        self.num_tokens: int = self.encoder.num_tokens  # N per branch
        # Identity taps: hook targets that see only F_G / only F_L (the encoder itself runs once on both; see docstring).
        self.tap_global = nn.Identity()
        self.tap_local = nn.Identity()

        self.glfm = GLFM(embed_dim, num_heads, cross_mlp_hidden, self.features, swap_cross)
        k = len(self.features)
        if fusion == "fffn":
            self.fffn: nn.Module | None = FFFN(k * self.num_tokens, embed_dim, fffn_hidden)
        elif fusion == "ca":
            self.fffn = None
            self.ca = _TokenCoordinateAttention(embed_dim, self.token_grid, k, ca_reduction)
        else:
            self.fffn = None  # vdpf_cat: F_C straight to the head
        # deviation: the official code also builds MLP_att_out (7.08 M parameters) and never uses it; we do not build it
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        # GLFM / FFFN / head keep PyTorch default initialisation, as the official code (only the backbone is timm-initialised).
        if encoder_weights is not None:
            self.load_encoder_weights(encoder_weights)

    # -- encoder weights -------------------------------------------------------------------------------------------
    def load_encoder_weights(self, path: str | Path) -> None:
        """Initialise the encoder from a local weights file (safetensors or weights-only torch); never downloads.

        Accepts our own keys (bare or under ``encoder.``) or a timm ViT state dict of the same size: its class token,
        head and class-token position are dropped and an RGB patch conv is summed to ``in_chans == 1``.
        """
        sd = read_state_dict(path)
        if any(k.startswith("encoder.") for k in sd):
            sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
        if isinstance(self.encoder, ViTEncoder):
            for k in [k for k in sd if k == "cls_token" or k.startswith(("head.", "fc_norm.", "head_drop."))]:
                del sd[k]
            pe = sd.get("pos_embed")
            if pe is not None and pe.shape[1] == self.num_tokens + 1:
                sd["pos_embed"] = pe[:, 1:]  # drop the class-token position (we have no class token)
            w = sd.get("patch_embed.proj.weight")
            if w is not None and w.shape[1] == 3 and self.in_chans == 1:
                sd["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)
        try:
            self.encoder.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: encoder weights do not match this encoder ({e})") from e

    # -- per-branch maps ---------------------------------------------------------------------------------------------
    def cam_layers(self) -> dict[str, nn.Module]:
        """Hook targets for Grad-CAM: their outputs are F_G and F_L ([B, N, D]) respectively."""
        return {"global": self.tap_global, "local": self.tap_local}

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] encoder tokens -> [B, D, gh, gw] map on the token grid."""
        b, n, d = tokens.shape
        gh, gw = self.token_grid
        if n != gh * gw:
            raise ValueError(f"expected {gh * gw} tokens ({gh}x{gw} grid), got {n}")
        return tokens.transpose(1, 2).reshape(b, d, gh, gw)

    def branch_tokens(self, image: torch.Tensor, box_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder outputs {"global": F_G, "local": F_L} ([B, N, D]) for one batch."""
        f_g, f_l = self._encode(image, box_mask)
        return {"global": f_g, "local": f_l}

    # -- forward -------------------------------------------------------------------------------------------------------
    def local_image(self, image: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        """I_L = I_G x box-mask (decision 2: the whole slice, zero outside the boxes; not a crop)."""
        return image * box_mask.to(image.dtype)

    def _check_inputs(self, image: torch.Tensor, box_mask: torch.Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != self.in_chans:
            raise ValueError(f"image must be [B, {self.in_chans}, H, W], got {tuple(image.shape)}")
        if box_mask.ndim != 4 or box_mask.shape[0] != image.shape[0] or box_mask.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"box_mask must be [B, 1, H, W] matching image {tuple(image.shape)}, got {tuple(box_mask.shape)}"
            )
        if box_mask.shape[1] not in (1, image.shape[1]):
            raise ValueError(f"box_mask must have 1 or {image.shape[1]} channels, got {box_mask.shape[1]}")

    def _encode(self, image: torch.Tensor, box_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(image, box_mask)
        b = image.shape[0]
        local = self.local_image(image, box_mask)
        # The official code calls the backbone twice and feeds it a 2nd, all-zero mask channel that is never used.
        if self._encoder_has_batchnorm and self.training:
            # BatchNorm in training mode normalises over the batch: two calls keep per-path statistics (and two running-
            # stat updates), as two calls of one shared encoder do.
            f_g, f_l = self.encoder(image), self.encoder(local)
        else:
            # One pass on [I_G; I_L] (2B images) == two calls with shared weights (no op mixes samples), bigger GEMMs.
            feats = self.encoder(torch.cat([image, local], dim=0))
            f_g, f_l = feats[:b], feats[b:]
        return self.tap_global(f_g), self.tap_local(f_l)

    def forward_features(self, image: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        """Fused token features [B, k*N, D] (after FFFN / CA; plain F_C for ``fusion="none"``)."""
        f_g, f_l = self._encode(image, box_mask)
        x = self.glfm(f_g, f_l)
        if self.fusion == "fffn":
            x = self.fffn(x)
        elif self.fusion == "ca":
            x = self.ca(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over tokens -> LN -> Linear (decision 5); ``pre_logits`` stops before the Linear."""
        # Official: mean -> Linear (no LN); the spec's head adds LayerNorm(D).
        x = self.norm(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, image: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(image, box_mask))


# ---------------------------------------------------------------------------------------------------------------------
# Registered variants (paper Tables 2-4); defaults are ViT-B/16 at 224^2, 3 classes
# ---------------------------------------------------------------------------------------------------------------------
PAPER = "VDPF: dual-path ViT with global-local fusion for lesion staging from 3-D MRI (MICCAI 2024)"


@register_model(input="image+box", in_chans=1, img_size=224, size_arg=True, init_only=("encoder_weights",),
                paper=PAPER)
def vdpf(**kwargs) -> VDPF:
    """VDPF (paper): ViT-B/16 shared encoder, GLFM, FFFN."""
    return VDPF(**kwargs)


@register_model(input="image+box", in_chans=1, img_size=224, size_arg=True, init_only=("encoder_weights",),
                paper=PAPER)
def vdpf_resnet(**kwargs) -> VDPF:
    """Resnet-DPF (Table 2): ResNet-50 encoder (7x7 map -> 1x1 conv to 768 -> 49 tokens), GLFM, FFFN."""
    return VDPF(**{"encoder": "resnet", **kwargs})


@register_model(input="image+box", in_chans=1, img_size=224, size_arg=True, init_only=("encoder_weights",),
                paper=PAPER)
def vdpf_ca(**kwargs) -> VDPF:
    """VDPF with FFFN replaced by Coordinate Attention (Table 2)."""
    return VDPF(**{"fusion": "ca", **kwargs})


@register_model(input="image+box", in_chans=1, img_size=224, size_arg=True, init_only=("encoder_weights",),
                paper=PAPER)
def vdpf_cat(**kwargs) -> VDPF:
    """VDPF without FFFN: concatenated F_C straight to the head (Table 2)."""
    return VDPF(**{"fusion": "none", **kwargs})


@register_model(input="image+box", in_chans=1, img_size=224, size_arg=True, init_only=("encoder_weights",),
                paper=PAPER)
def vdpf_sc(**kwargs) -> VDPF:
    """VDPF with local and global swapped in the cross-attention block (Table 2)."""
    return VDPF(**{"swap_cross": True, **kwargs})
