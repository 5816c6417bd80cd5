"""PIC (docs/METHOD.md section 2): definition, reductions, dense PIC via the integral image."""

import pytest
import torch

from bsr_hub.data.pic import dense_pic, gradient_map, integral_image, pic


def test_step_edge_by_hand():
    # A vertical step 0 | 100 in a 6x6 patch: every interior pixel touching the step sees Gx = 4 * 100 = 400,
    # Gy = 0. The 4x4 interior has 2 such columns (the pixels either side of the step): 8 pixels * 400.
    patch = torch.zeros(3, 6, 6)
    patch[:, :, 3:] = 100.0
    g = gradient_map(patch)
    assert g.shape == (4, 4)
    assert torch.equal(g[:, 1:3], torch.full((4, 2), 400.0))
    assert torch.equal(g[:, [0, 3]], torch.zeros(4, 2))
    assert pic(patch, reduction="sum").item() == 8 * 400.0
    assert pic(patch).item() == 8 * 400.0 / 16


def test_equals_a_conv2d_sobel():
    import torch.nn.functional as F

    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (2, 3, 13, 17), generator=g, dtype=torch.uint8)
    ref = F.conv2d(x.float().reshape(6, 1, 13, 17), kernels).abs().sum(1).reshape(2, 3, 11, 15).amax(1)
    assert torch.equal(gradient_map(x), ref)
    assert torch.equal(gradient_map(x.double()), ref.double())


def test_max_over_channels_and_grey():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 10, 10), generator=g, dtype=torch.uint8)
    per_channel = torch.stack([gradient_map(rgb[:, c : c + 1]) for c in range(3)])  # (3, B, 8, 8)
    assert torch.equal(gradient_map(rgb), per_channel.amax(0))
    grey = rgb[:, :1]
    assert torch.equal(pic(grey), pic(grey.expand(-1, 3, -1, -1)))


def test_uint8_and_float_agree_and_flat_is_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 12, 12), generator=g, dtype=torch.uint8)
    assert torch.equal(pic(x), pic(x.float()))
    assert torch.equal(pic(torch.full((2, 3, 8, 8), 77.0)), torch.zeros(2))


def test_invariant_under_the_8_flips_and_rotations():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (3, 3, 16, 16), generator=g).float()
    ref = pic(x)
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        assert torch.allclose(pic(r), ref)
        assert torch.allclose(pic(r.flip(-1)), ref)


def test_reductions():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (5, 3, 9, 9), generator=g).float()
    assert torch.allclose(pic(x, reduction="sum"), pic(x) * 49)
    with pytest.raises(ValueError, match="reduction"):
        pic(x, reduction="max")


def test_integral_image():
    v = torch.arange(12.0).reshape(3, 4)
    s = integral_image(v)
    assert s.shape == (4, 5) and s.dtype == torch.float64
    assert s[2, 3].item() == v[:2, :3].sum().item()
    assert torch.equal(s[0], torch.zeros(5)) and torch.equal(s[:, 0], torch.zeros(4))


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dense_pic_equals_per_patch_pic_at_random_positions(stride, reduction):
    g = torch.Generator().manual_seed(4)
    p = 11
    img = torch.randint(0, 256, (2, 3, 37, 29), generator=g, dtype=torch.uint8)
    dense = dense_pic(img, p, stride=stride, reduction=reduction)
    assert dense.shape == (2, (37 - p) // stride + 1, (29 - p) // stride + 1)
    for _ in range(40):
        b = int(torch.randint(0, 2, (1,), generator=g))
        i = int(torch.randint(0, dense.shape[1], (1,), generator=g))
        j = int(torch.randint(0, dense.shape[2], (1,), generator=g))
        y, x = i * stride, j * stride
        direct = pic(img[b, :, y : y + p, x : x + p], reduction=reduction)
        torch.testing.assert_close(dense[b, i, j], direct, rtol=1e-6, atol=1e-4)
    # Unbatched input gives the unbatched result.
    torch.testing.assert_close(dense_pic(img[1], p, stride, reduction), dense[1])


def test_dense_pic_corners_exact():
    g = torch.Generator().manual_seed(5)
    img = torch.randint(0, 256, (3, 20, 20), generator=g).float()
    d = dense_pic(img, 20)
    assert d.shape == (1, 1)
    torch.testing.assert_close(d[0, 0], pic(img))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="smaller than patch_size"):
        dense_pic(torch.zeros(3, 10, 10), 12)
    with pytest.raises(ValueError, match="patch_size"):
        dense_pic(torch.zeros(3, 10, 10), 2)
    with pytest.raises(ValueError, match="stride"):
        dense_pic(torch.zeros(3, 10, 10), 5, stride=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        pic(torch.zeros(10, 10))
    with pytest.raises(TypeError):
        pic([[1, 2], [3, 4]])
