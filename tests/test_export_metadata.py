"""The export's metadata says the preprocessing the run's predict and eval use."""
import pytest
import torch

from resnetlab.engine.records import Artifact
from resnetlab.inference.export_meta import describe, metadata


def _artifact(interpolation, kind="channel", mean=None):
    data = {"dataset": "folder", "augment": "rrc", **({"interpolation": interpolation} if interpolation else {})}
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1) if mean is None else mean
    norm = {"kind": kind, "mean": mean, "std": torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)}
    return Artifact(config={"data": data}, input_size=224, eval_resize=256, model_name="resnet50", model_kwargs={},
                    num_classes=2, classes=["a", "b"], normalizer=norm, weights={})


@pytest.mark.parametrize("interpolation, said", [("bicubic", "bicubic, antialiased"),
                                                 ("bilinear", "bilinear, antialiased"),
                                                 (None, "bilinear, antialiased")])  # a config of before the key
def test_the_metadata_names_the_runs_interpolation(interpolation, said):
    meta = metadata(_artifact(interpolation))
    assert meta["preprocessing"]["interpolation"] == said and f"256 ({said})" in describe(meta)


def test_per_channel_statistics_are_flat_lists_and_a_mean_image_keeps_its_shape():
    norm = metadata(_artifact("bilinear"))["normalizer"]
    assert norm["mean"] == pytest.approx([0.485, 0.456, 0.406]) and norm["std"] == pytest.approx([0.229, 0.224, 0.225])
    image = metadata(_artifact("bilinear", "pixel", torch.rand(3, 4, 4)))["normalizer"]["mean"]
    assert torch.tensor(image).shape == (3, 4, 4)


@pytest.mark.parametrize("dataset, augment, resize", [("folder", "rrc", 37), ("folder", "imagenet", 37),
                                                      ("folder", "cifar", 32), ("cifar10", "rrc", 32)])
def test_a_cifar_net_trained_on_photos_with_rrc_is_predicted_and_exported_as_eval_reads_them(dataset, augment, resize):
    """resnet20 + rrc on a photo folder: eval resized to eval_resize and cropped; predict/export squashed the photo."""
    from resnetlab.inference.export_meta import preprocessing
    from resnetlab.inference.predictor import whole_view

    ckpt = Artifact(config={"data": {"dataset": dataset, "augment": augment}}, input_size=32, eval_resize=37,
                    model_name="resnet20", model_kwargs={}, num_classes=2, classes=[], normalizer=None, weights={})
    assert preprocessing(ckpt)["resize"] == resize
    assert whole_view(dataset, augment, "cifar") == (resize == 32)
