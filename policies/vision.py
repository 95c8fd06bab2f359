"""Vision encoders: a ResNet-18 written here, spatial softmax, and tensor augmentations.

torchvision does not import beside torch 2.13 on these machines, so ResNet-18 is written out
(He et al. 2016, BasicBlock [2, 2, 2, 2]). Parameter names match torchvision's, so a user's
local `resnet18-*.pth` / `.safetensors` file loads with `load_pretrained` and nothing is ever
downloaded. Normalization layers are configurable:

- `batch`: BatchNorm2d, folded into the convolutions at inference (`fuse_batchnorm`), fastest;
- `frozen_batch`: BatchNorm with fixed statistics, what ACT uses with pretrained weights;
- `group`: GroupNorm (16 channels per group), what Diffusion Policy uses because BatchNorm
  interacts badly with EMA weights and small batches.

Images enter as uint8 (B, 3, H, W); `to_float_image` scales them to [0, 1] and applies the
ImageNet mean/std that pretrained weights expect.

`ImageEncoder` is the one observation encoder every policy family builds its image features
with: preprocessing (resize, crop, jitter), one ResNet-18 trunk shared by all cameras, and a
head (`tokens`: a 1x1 projection of the feature map, as ACT attends over; `keypoints`: spatial
softmax, as Diffusion Policy conditions on; `pool`: global average pooling, the plain baseline).
"""

from __future__ import annotations

import math
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import PolicyError

__all__ = [
    "ENCODER_HEADS",
    "ImageEncoder",
    "ResNet18",
    "SpatialSoftmax",
    "accept_legacy_names",
    "color_jitter",
    "crop",
    "fuse_batchnorm",
    "load_pretrained",
    "optimize_trunks",
    "prepare_images",
    "sine_embedding_2d",
    "to_float_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float_image(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float, ImageNet-normalized."""
    x = images.float() / 255.0
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, never trained)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # torchvision BatchNorm extra key
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_batch":
        return FrozenBatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 16), channels)  # 16 channels per group
    raise PolicyError(f"unknown vision norm '{kind}'; use 'batch', 'frozen_batch' or 'group'")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 trunk returning the layer4 feature map (B, 8 * width, H/32, W/32).

    `width` 64 is the standard network (and the only one pretrained weights fit); smaller
    widths (16, 32) keep the topology but cut compute by width^2, which is what lets the tiny
    and CPU presets train in minutes on two cores.
    """

    def __init__(self, norm: str = "batch", width: int = 64) -> None:
        super().__init__()
        self.norm = norm
        self.width = width
        self.out_channels = 8 * width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = _norm(norm, width)
        widths = (width, 2 * width, 4 * width, 8 * width)
        cin = width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(cin, w, stride, norm), BasicBlock(w, w, 1, norm))
            self.add_module(f"layer{i + 1}", layer)
            cin = w
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last norm of each residual branch: blocks start as identities (Goyal et al.).
        for m in self.modules():
            if isinstance(m, BasicBlock) and isinstance(m.bn2, (nn.BatchNorm2d, nn.GroupNorm)):
                with torch.no_grad():
                    m.bn2.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.max_pool2d(x, 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_pretrained(model: ResNet18, path: str | Path) -> None:
    """Load torchvision-named ResNet-18 weights from a local .pth/.pt/.safetensors file.

    The classifier (`fc.*`) is ignored. `.pth` files are read with `weights_only=True`, so no
    code inside the file runs. GroupNorm trunks cannot take BatchNorm statistics. Only training
    calls this: loading a checkpoint never follows the path stored in it.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"pretrained weights file {path} not found; give a local ResNet-18 file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # SafetensorError: corrupt or truncated
            raise PolicyError(f"could not read {path} as a safetensors weights file: {exc}") from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PolicyError(f"could not read {path} as a torch weights file: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    if model.width != 64:
        raise PolicyError(f"pretrained ResNet-18 weights need vision width 64, not {model.width}")
    if model.norm == "group":
        raise PolicyError("pretrained ResNet-18 weights carry BatchNorm statistics; use norm "
                          "'frozen_batch' or 'batch' with them, not 'group'")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")
             or model.norm == "batch"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise PolicyError(
            f"{path} does not look like ResNet-18 weights: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )


@torch.no_grad()
def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every (Conv2d, BatchNorm) pair of a ResNet18 into the conv, in place (inference).

    Saves the normalization pass per layer; outputs match to float rounding. Only valid in
    eval mode, so call it on a deployed copy, never during training.
    """
    for block in module.modules():
        pairs = []
        if isinstance(block, ResNet18):
            pairs.append(("conv1", "bn1"))
        if isinstance(block, BasicBlock):
            pairs += [("conv1", "bn1"), ("conv2", "bn2")]
            if block.downsample is not None:
                _fuse_pair(block.downsample, "0", "1")
        for conv_name, bn_name in pairs:
            _fuse_pair(block, conv_name, bn_name)
    return module


def _fuse_pair(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    if not isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, bias=True)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map (Levine et al. 2016): the expected (x, y) of a softmax per channel.

    A 1x1 conv first maps C channels to `num_keypoints`; the output is (B, 2 * num_keypoints),
    coordinates in [-1, 1]. Diffusion Policy uses it instead of global pooling because it keeps
    where things are, which is what manipulation needs.
    """

    def __init__(self, in_channels: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints
        self._grid_cache: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = self.proj(feat)
        b, k, h, w = x.shape
        grid = self._grid(h, w, x)
        attn = torch.softmax(x.flatten(2), dim=-1)  # (B, K, HW)
        return (attn @ grid).reshape(b, 2 * k)

    def _grid(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        key = (h, w)
        if key not in self._grid_cache:
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            self._grid_cache[key] = torch.stack([xs.flatten(), ys.flatten()], dim=-1)
        return self._grid_cache[key].to(like.dtype)


# -- augmentations (tensors, batched, per-sample randomness) ---------------------------------------


def crop(images: torch.Tensor, size: tuple[int, int], random: bool,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop (B, C, H, W) to `size`: a random window per sample when training, centered otherwise."""
    b, _, h, w = images.shape
    ch, cw = size
    if (ch, cw) == (h, w):
        return images
    if ch > h or cw > w:
        raise PolicyError(f"crop size {size} is larger than the image ({h}, {w})")
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, :, top:top + ch, left:left + cw]
    tops = torch.randint(0, h - ch + 1, (b,), generator=generator)
    lefts = torch.randint(0, w - cw + 1, (b,), generator=generator)
    rows = (tops[:, None] + torch.arange(ch)[None]).to(images.device)  # (B, ch)
    cols = (lefts[:, None] + torch.arange(cw)[None]).to(images.device)  # (B, cw)
    idx_b = torch.arange(b, device=images.device)[:, None, None]
    out = images.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]  # (B, ch, cw, C)
    return out.permute(0, 3, 1, 2).contiguous()


def color_jitter(images: torch.Tensor, brightness: float = 0.3, contrast: float = 0.3,
                 saturation: float = 0.3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness/contrast/saturation per sample on float images in [0, 1] (B, 3, H, W)."""
    b = images.shape[0]

    def factor(amount: float) -> torch.Tensor:
        u = torch.rand(b, generator=generator).to(images.device)
        return (1.0 + amount * (2.0 * u - 1.0)).view(b, 1, 1, 1)

    x = images
    if brightness > 0:
        x = x * factor(brightness)
    if contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(contrast) + mean
    if saturation > 0:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * factor(saturation) + gray
    return x.clamp(0.0, 1.0)


def prepare_images(images: torch.Tensor, resize: tuple[int, int] | None, crop_ratio: float,
                   jitter: float, train: bool) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalized float (B, 3, h, w): resize, crop, jitter, ImageNet stats.

    The same function runs in training (random crop, jitter) and at inference (center crop,
    no jitter), inside the model, so a served policy preprocesses exactly as it was trained.
    """
    x = images.float() / 255.0
    if resize is not None and tuple(x.shape[-2:]) != tuple(resize):
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False, antialias=True)
    if crop_ratio < 1.0:
        h, w = x.shape[-2:]
        x = crop(x, (max(1, round(h * crop_ratio)), max(1, round(w * crop_ratio))), random=train)
    if train and jitter > 0:
        x = color_jitter(x, jitter, jitter, jitter)
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def sine_embedding_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR-style 2D sinusoidal position embedding, (h*w, dim), as ACT uses for image tokens."""
    if dim % 4:
        raise PolicyError(f"2D sine embedding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    scale = 2 * math.pi
    ys = ys.flatten()[:, None] / max(h, 1) * scale * omega
    xs = xs.flatten()[:, None] / max(w, 1) * scale * omega
    return torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1)


# -- the shared observation encoder ----------------------------------------------------------------

#: Heads of `ImageEncoder`: what a policy gets per camera from the trunk's feature map.
ENCODER_HEADS = ("tokens", "keypoints", "pool")


class ImageEncoder(nn.Module):
    """Per-camera image features from one ResNet-18 trunk shared by every camera.

    Images enter as uint8 (B, 3, H, W) and are preprocessed by `prepare_images` inside the
    model, so a served policy sees exactly the preprocessing it was trained with. The head
    decides what comes out per camera:

    - `tokens`: (B, out_dim, h, w), a 1x1 projection of the feature map (ACT's image tokens);
    - `keypoints`: (B, out_dim), spatial-softmax keypoints then Linear + ReLU (Diffusion Policy);
    - `pool`: (B, out_dim), global average pooling then Linear + ReLU (plain baselines).
    """

    def __init__(self, cameras: list[str], *, head: str, out_dim: int, norm: str = "batch",
                 width: int = 64, pretrained: str | None = None, num_keypoints: int = 32,
                 image_size: list[int] | None = None, crop_ratio: float = 1.0,
                 color_jitter: float = 0.0) -> None:
        super().__init__()
        if head not in ENCODER_HEADS:
            raise PolicyError(f"unknown image encoder head '{head}'; use one of {ENCODER_HEADS}")
        self.cameras = list(cameras)
        self.head_kind = head
        self.image_size = None if image_size is None else tuple(image_size)
        self.crop_ratio, self.color_jitter = crop_ratio, color_jitter
        self.backbone = ResNet18(norm=norm, width=width)
        if pretrained:
            load_pretrained(self.backbone, pretrained)
        channels = self.backbone.out_channels
        if head == "tokens":
            self.head: nn.Module = nn.Conv2d(channels, out_dim, 1)
        elif head == "keypoints":
            self.head = nn.Sequential(SpatialSoftmax(channels, num_keypoints),
                                      nn.Linear(2 * num_keypoints, out_dim), nn.ReLU())
        else:
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, out_dim),
                                      nn.ReLU())
        self.out_dim = out_dim

    def forward(self, images: dict[str, torch.Tensor], train: bool) -> list[torch.Tensor]:
        """{camera key: uint8 (B, 3, H, W)} -> one feature tensor per camera, in `cameras` order."""
        return [self.encode(images[key], train) for key in self.cameras]

    def encode(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """One camera's uint8 (B, 3, H, W) images -> its features (see the class docstring)."""
        x = prepare_images(images, self.image_size, self.crop_ratio, self.color_jitter, train)
        return self.head(self.backbone(x))


def accept_legacy_names(model: nn.Module, renames: dict[str, str]) -> None:
    """Let `model.load_state_dict` take weights saved under older parameter names.

    `renames` maps an old key prefix to its new one (e.g. ACT's `backbone.` ->
    `vision.backbone.` since the encoder is shared). Checkpoints written before a rename keep
    loading; new checkpoints are written under the new names only.
    """

    def rename(state_dict, prefix, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix):]
            for old, new in renames.items():
                if local.startswith(old) and not local.startswith(new):
                    state_dict[prefix + new + local[len(old):]] = state_dict.pop(key)
                    break

    model._register_load_state_dict_pre_hook(rename)


def optimize_trunks(model: nn.Module) -> nn.Module:
    """Inference transforms for every ResNet-18 in `model`, in place: fold BatchNorm into the
    convolutions and store the trunk channels-last (NHWC), the layout oneDNN's CPU convolutions
    run fastest in (measured: -18% ResNet-18 time at 240x320). Eval mode only."""
    for trunk in [m for m in model.modules() if isinstance(m, ResNet18)]:
        fuse_batchnorm(trunk)
        trunk.to(memory_format=torch.channels_last)
    return model
