"""Vision: the shared ImageEncoder, ResNet-18 shapes, pretrained loading from a local file, BN folding, keypoints, augmentations."""

import pytest
import torch

from tether.core.errors import PolicyError
from tether.policies.vision import (
    ImageEncoder,
    ResNet18,
    SpatialSoftmax,
    color_jitter,
    crop,
    fuse_batchnorm,
    load_pretrained,
    optimize_trunks,
    prepare_images,
)


def test_resnet18_shapes_and_parameter_count():
    net = ResNet18()
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in the fc classifier.
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000
    assert net(torch.zeros(1, 3, 96, 128)).shape == (1, 512, 3, 4)
    assert ResNet18(norm="group", width=16)(torch.zeros(2, 3, 64, 64)).shape == (2, 128, 2, 2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_weights_load_from_a_local_torchvision_style_file(tmp_path, suffix):
    src = ResNet18(norm="batch")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.05)
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = dict(src.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # classifier
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    dst = ResNet18(norm="frozen_batch")
    load_pretrained(dst, path)
    x = torch.randn(2, 3, 64, 64)
    src.eval()
    assert torch.allclose(dst(x), src(x), atol=1e-5)


def test_pretrained_errors(tmp_path):
    with pytest.raises(PolicyError, match="not found"):
        load_pretrained(ResNet18(), tmp_path / "none.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(PolicyError, match="does not look like ResNet-18"):
        load_pretrained(ResNet18(), tmp_path / "partial.pth")
    with pytest.raises(PolicyError, match="group"):
        load_pretrained(ResNet18(norm="group"), tmp_path / "partial.pth")
    with pytest.raises(PolicyError, match="width 64"):
        load_pretrained(ResNet18(width=16), tmp_path / "partial.pth")


def test_fused_batchnorm_matches_eval_outputs():
    net = ResNet18(norm="batch", width=16)
    net.train()
    for _ in range(3):  # give the running statistics non-trivial values
        net(torch.randn(4, 3, 64, 64) * 2 + 1)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    ref = net(x)
    fuse_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(net(x), ref, atol=1e-4)


def test_spatial_softmax_finds_the_peak():
    ss = SpatialSoftmax(1, num_keypoints=1)
    with torch.no_grad():
        ss.proj.weight.fill_(1.0)
        ss.proj.bias.zero_()
    feat = torch.zeros(1, 1, 5, 9)
    feat[0, 0, 4, 0] = 100.0  # bottom-left corner
    xy = ss(feat)
    assert xy.shape == (1, 2)
    assert torch.allclose(xy, torch.tensor([[-1.0, 1.0]]), atol=1e-3)


def test_crop_random_vs_center_and_jitter_range():
    img = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)
    center = crop(img, (8, 10), random=False)
    assert torch.equal(center, img[:, :, 1:9, 1:11])
    g = torch.Generator().manual_seed(0)
    rand = crop(img, (8, 10), random=True, generator=g)
    assert rand.shape == (2, 3, 8, 10)
    for b in range(2):  # each sample is a contiguous window of its own image
        top = int(rand[b, 0, 0, 0].item() - img[b, 0, 0, 0].item()) // 12
        left = int(rand[b, 0, 0, 0].item() - img[b, 0, 0, 0].item()) % 12
        assert torch.equal(rand[b], img[b, :, top:top + 8, left:left + 10])
    with pytest.raises(PolicyError, match="larger"):
        crop(img, (11, 12), random=False)
    x = torch.rand(4, 3, 8, 8)
    y = color_jitter(x, 0.5, 0.5, 0.5, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_prepare_images_train_and_eval():
    u8 = torch.randint(0, 256, (2, 3, 60, 80), dtype=torch.uint8)
    ev = prepare_images(u8, [48, 64], 0.9, 0.3, train=False)
    assert ev.shape == (2, 3, 43, 58)
    assert torch.equal(ev, prepare_images(u8, [48, 64], 0.9, 0.3, train=False))  # deterministic
    torch.manual_seed(0)
    tr1 = prepare_images(u8, [48, 64], 0.9, 0.3, train=True)
    assert tr1.shape == ev.shape and not torch.equal(tr1, ev)


@pytest.mark.parametrize("head, shape", [("tokens", (2, 24, 2, 2)), ("keypoints", (2, 24)), ("pool", (2, 24))])
def test_image_encoder_heads_share_one_trunk_across_cameras(head, shape):
    enc = ImageEncoder(["image.top", "image.wrist"], head=head, out_dim=24, width=8, num_keypoints=4,
                       image_size=[48, 64], crop_ratio=0.9)
    images = {"image.top": torch.randint(0, 256, (2, 3, 60, 80), dtype=torch.uint8),
              "image.wrist": torch.zeros(2, 3, 30, 40, dtype=torch.uint8)}  # resized to 48x64 too
    out = enc(images, train=True)
    assert [tuple(o.shape) for o in out] == [shape, shape]
    assert sum(isinstance(m, ResNet18) for m in enc.modules()) == 1
    enc.eval()
    torch.testing.assert_close(enc(images, train=False)[0], enc.encode(images["image.top"], train=False))
    with pytest.raises(PolicyError, match="unknown image encoder head 'flat'"):
        ImageEncoder(["image.top"], head="flat", out_dim=8, width=8)


def test_optimize_trunks_keeps_the_encoder_outputs():
    enc = ImageEncoder(["image.top"], head="pool", out_dim=8, width=8)
    enc.train()
    images = {"image.top": torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)}
    for _ in range(3):  # non-trivial BatchNorm statistics
        enc(images, train=True)
    enc.eval()
    ref = enc(images, train=False)[0]
    optimize_trunks(enc)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    torch.testing.assert_close(enc(images, train=False)[0], ref, atol=1e-4, rtol=1e-4)
