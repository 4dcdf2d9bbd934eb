"""Normaliser: per-pixel mean on a hand-built dataset, per-channel statistics, state round trip."""
import numpy as np
import pytest
import torch

from resnetlab.data import Normalizer, synthetic
from resnetlab.errors import UserError


def _hand_built():
    """Four 2x2 images whose per-pixel mean is known by hand."""
    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor([0, 255, 255, 0], dtype=torch.uint8)  # mean 127.5
    x[:, 1, 1, 1] = torch.tensor([4, 8, 12, 16], dtype=torch.uint8)  # mean 10
    x[:, 2] = 51  # mean 51 everywhere
    return x


def test_per_pixel_mean_on_hand_built_data():
    x = _hand_built()
    norm = Normalizer.fit("pixel", [x[:3], x[3:]])  # batches of different lengths
    expected = torch.zeros(3, 2, 2, dtype=torch.float64)
    expected[0, 0, 0], expected[1, 1, 1], expected[2] = 127.5, 10, 51
    assert torch.allclose(norm.mean.double(), expected / 255)
    assert torch.equal(norm.std, torch.ones(3, 1, 1))
    out = norm(x)
    assert out.dtype == torch.float32 and torch.allclose(out, x.float() / 255 - expected.float() / 255, atol=1e-6)
    assert torch.allclose(out.mean(0), torch.zeros(3, 2, 2), atol=1e-6)


def test_per_channel_mean_std_match_numpy():
    data = synthetic(200, 5, 16)
    norm = Normalizer.fit("channel", data.images.split(64))
    pixels = data.images.numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    assert np.allclose(norm.mean.flatten().numpy(), pixels.mean(1), atol=1e-6)
    assert np.allclose(norm.std.flatten().numpy(), pixels.std(1), atol=1e-6)
    out = norm(data.images)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_state_round_trip_and_resized_mean():
    norm = Normalizer.fit("pixel", [synthetic(50, 3, 8).images])
    again = Normalizer.from_state(norm.state())
    x = synthetic(5, 3, 8, "test").images
    assert torch.equal(norm(x), again(x)) and again.kind == "pixel"
    big = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert norm(big).shape == (2, 3, 16, 16)  # mean image resized to the input
    flat = Normalizer.fit("pixel", [torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)])
    assert torch.allclose(flat(torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)), torch.zeros(1, 3, 16, 16), atol=1e-6)


def test_fixed_imagenet_statistics_and_errors():
    norm = Normalizer.fit("imagenet", [])
    assert torch.allclose(norm.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(UserError, match="unknown data.normalize 'zca'"):
        Normalizer.fit("zca", [])
    with pytest.raises(UserError, match="empty"):
        Normalizer.fit("pixel", [])
    with pytest.raises(UserError, match="malformed"):
        Normalizer.from_state({"mean": torch.zeros(3)})


@pytest.mark.parametrize("mean, std", [((0.5, 0.5, 0.5), (0.0, 0.2, 0.2)), ((0.5, 0.5, 0.5), (float("nan"), 1, 1)),
                                       ((float("inf"), 0.5, 0.5), (0.2, 0.2, 0.2)), ((0.5, 0.5, 0.5), (-0.2, 0.2, 0.2))])
def test_a_state_no_fit_makes_is_refused(mean, std):
    """A checkpoint's std of 0 or NaN gave NaN probabilities in fp32, plausible wrong ones in bf16,
    and a traceback from int8's calibration."""
    with pytest.raises(UserError, match=r"^normalizer state holds a mean or std no training makes \(std \["):
        Normalizer.from_state({"kind": "channel", "mean": torch.tensor(mean), "std": torch.tensor(std)})
