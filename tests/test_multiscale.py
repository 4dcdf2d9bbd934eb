"""Multi-scale testing as the paper's fully-convolutional form (Sec. 3.4, after VGG's dense evaluation):
each whole image, shorter side resized to each of multiscale_sides (aspect kept), and its mirror,
softmax averaged; images of a batch grouped by view shape, never cropped to a centre square."""
import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import ArrayDataset, FileDataset, LoaderSpec, make_eval_loader, multiscale_sides, synthetic
from resnetlab.data.augment import resize_batch
from resnetlab.data.decode import resample_filter, resized_shape
from resnetlab.data.normalize import Normalizer
from resnetlab.data.views import ViewGroup
from resnetlab.engine.runtime import Runtime
from resnetlab.engine.scoring import predict_views
from resnetlab.inference.predictor import Predictor, all_probs
from resnetlab.models import create_model

RT = Runtime.resolve(device="cpu", precision="fp32", channels_last="false")
CFG = DataConfig(dataset="folder", augment="imagenet", image_size=16, eval_resize=18)
SIZES = [(120, 90), (90, 120), (100, 100), (160, 120), (130, 70)]  # (w, h): 4:3 twice, 3:4, square, wide


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("multiscale"), np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        paths.append(str(root / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return FileDataset(paths, torch.arange(len(paths)) % 3, ["a", "b", "c"])


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3).eval()
    for m in model.modules():  # untrained BN statistics make every image look alike: spread them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    normalizer = Normalizer("channel", torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.25, 0.2, 0.3]))
    return model, normalizer


def protocol_probs(dataset, net, batch_size, cfg=CFG):
    model, normalizer = net
    return torch.cat([predict_views(model, normalizer, views, RT)
                      for views, _ in make_eval_loader(dataset, cfg, LoaderSpec(batch_size), "multiscale")])


@torch.no_grad()
def reference_probs(paths, net):
    """Per image, alone: the whole image resized (shorter side to each side, the package's filter), it
    and its mirror through the network, softmax averaged over the ten views."""
    model, normalizer = net
    out = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        total = 0
        for side in multiscale_sides(CFG.image_size):
            size = resized_shape(*img.size, side)
            pixels = np.array(img if size == img.size else img.resize(size, resample_filter(CFG.interpolation)))
            x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
            for view in (x, x.flip(3)):
                total = total + model(normalizer(view)).softmax(dim=1)
        out.append(total / (2 * len(multiscale_sides(CFG.image_size))))
    return torch.cat(out)


def test_sides_at_the_small_size_tested():
    assert multiscale_sides(16) == [16, 18, 27, 34, 46]


def test_probabilities_are_the_whole_images_and_mirrors_averaged(files, net):
    assert torch.allclose(protocol_probs(files, net, 8), reference_probs(files.paths, net), atol=1e-6, rtol=0)


def test_a_batch_of_mixed_aspect_ratios_scores_each_image_as_alone(files, net):
    together, alone = protocol_probs(files, net, 8), protocol_probs(files, net, 1)
    assert torch.allclose(together, alone, atol=1e-6, rtol=0)


def test_views_are_whole_images_grouped_by_shape(files):
    views, y = next(iter(make_eval_loader(files, CFG, LoaderSpec(8), "multiscale")))
    assert len(y) == len(SIZES) and all(isinstance(g, ViewGroup) and g.mirror for g in views)
    shapes = {}  # image -> the (h, w) of its views, one per side
    for g in views:
        assert g.x.dtype == torch.uint8 and len(g.rows) == len(g.x) == len(set(g.rows.tolist()))
        for row in g.rows.tolist():
            shapes.setdefault(row, []).append(tuple(g.x.shape[2:]))
    # the 4:3 image keeps its full width: 120x90 at shorter side 16 is 21 wide, at 46 it is 61
    assert shapes[0] == [(16, 21), (18, 24), (27, 36), (34, 45), (46, 61)]
    assert shapes[1] == [(21, 16), (24, 18), (36, 27), (45, 34), (61, 46)]
    assert shapes[2] == [(s, s) for s in multiscale_sides(16)]
    assert shapes[3] == shapes[0] and shapes[4][0] == (16, 29)  # 16 * 130 / 70 = 29.7: truncated, as torchvision
    # images of one shape run as one batch: the two 4:3 images share a group at every side
    assert len(views) == 4 * len(multiscale_sides(16)) and sorted(len(g.rows) for g in views[:4]) == [1, 1, 1, 2]


def test_square_images_run_as_whole_batches(net):
    data = synthetic(12, 3, 32)
    cfg = DataConfig(dataset="synthetic", image_size=16)
    views, y = next(iter(make_eval_loader(data, cfg, LoaderSpec(12), "multiscale")))
    assert [tuple(g.x.shape) for g in views] == [(12, 3, s, s) for s in multiscale_sides(16)]
    assert all(g.mirror and g.rows.tolist() == list(range(12)) for g in views)
    model, normalizer = net
    with torch.no_grad():
        expected = sum(model(normalizer(v)).softmax(dim=1) for side in multiscale_sides(16)
                       for x in [resize_batch(data.images, side)] for v in (x, x.flip(3))) / 10
    assert torch.allclose(protocol_probs(data, net, 5, cfg), expected, atol=1e-6, rtol=0)


def test_the_python_api_scores_the_same_views_as_eval(files, net):
    model, normalizer = net
    predictor = Predictor(model, normalizer, ["a", "b", "c"], CFG, RT, small=False)
    idx, probs = all_probs(predictor, files.paths, "multiscale", batch_size=3)
    assert idx.tolist() == list(range(len(SIZES)))
    assert torch.allclose(probs, protocol_probs(files, net, 8), atol=1e-6, rtol=0)


def test_an_array_dataset_of_one_non_square_shape_keeps_its_aspect(net):
    images = torch.randint(0, 256, (4, 3, 24, 32), dtype=torch.uint8)
    data = ArrayDataset(images, torch.zeros(4, dtype=torch.int64), ["a", "b", "c"])
    views, _ = next(iter(make_eval_loader(data, DataConfig(dataset="synthetic", image_size=16), LoaderSpec(4),
                                          "multiscale")))
    assert [tuple(g.x.shape[2:]) for g in views] == [(s, resized_shape(32, 24, s)[0]) for s in multiscale_sides(16)]


def test_decoding_workers_hand_over_the_same_groups(files):
    def groups(workers):
        loader = make_eval_loader(files, CFG, LoaderSpec(3, workers=workers), "multiscale")
        return [(g.x, g.rows, g.mirror) for views, _ in loader for g in views]

    plain, workers = groups(0), groups(2)
    assert len(plain) == len(workers) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
                                              for a, b in zip(plain, workers))


def test_a_strip_is_scored_by_its_centred_part_of_four_to_one(tmp_path, net):
    """A legal 1 x 2000 strip at a shorter side of 365 px was a 365 x 730,000 view (gigabytes); whole
    views keep at most 4:1 of an image, centred, for multiscale and 10-crop alike; 4:1 itself stays whole."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (200, 2, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "strip.png")
    Image.fromarray(pixels[96:104]).save(tmp_path / "middle.png")  # its centred 2 x 8
    Image.fromarray(rng.integers(0, 256, (10, 40, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    files = FileDataset([str(tmp_path / n) for n in ("strip.png", "middle.png", "wide.png")], torch.zeros(3, dtype=torch.int64), ["a"])
    views, _ = next(iter(make_eval_loader(files, CFG, LoaderSpec(3), "multiscale")))
    shapes = {}
    for g in views:
        for row in g.rows.tolist():
            shapes.setdefault(row, []).append(tuple(g.x.shape[2:]))
    assert shapes[0] == shapes[1] == [(4 * s, s) for s in multiscale_sides(16)]
    assert shapes[2] == [(s, 4 * s) for s in multiscale_sides(16)]  # 40 x 10: whole
    probs = protocol_probs(files, net, 3)  # (the strip's resampling also reads the pixels next to its part)
    assert torch.allclose(probs[0], probs[1], atol=2e-3, rtol=0) and not torch.allclose(probs[0], probs[2], atol=0.05)
    crops, _ = next(iter(make_eval_loader(files, CFG, LoaderSpec(3), "10crop")))
    assert all(c.shape[1:] == (3, 16, 16) for c in crops)
    assert sum((c[0].float() - c[1].float()).abs().mean() for c in crops) / 10 < 8  # of 255: the same part
