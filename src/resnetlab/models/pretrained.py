"""Published ResNet weights by name: one frozen record per file, named `<model>.<tag>` as timm does.

Data only: each record says where the file is, how to check it, which layout its tensors use, how
its images were preprocessed and what accuracy its publisher reports. Fetching and loading are
`models/hub.py`; layout conversion is `models/layouts.py`. Every figure below was copied from the
publisher (the `source` page or the publisher's code named in `accuracy_note`); a figure that
could not be found is None, never estimated.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from resnetlab.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASET_CLASSES = {"imagenet-1k": "imagenet1k.txt", "cifar10": "cifar10.txt", "cifar100": "cifar100.txt"}
# ImageNet folders are usually named by WordNet id (n01440764/ ...): accepted as the same classes.
CLASS_IDS = {"imagenet-1k": "imagenet1k_wnids.txt"}


@dataclass(frozen=True)
class Preprocess:
    """The evaluation preprocessing the published accuracy was measured with.

    Pixels are RGB, scaled by `scale` (0..255 -> 0..1), then (x - mean) / std per channel. The
    shorter image side is resized to `resize` with `interpolation` (antialiased, as Pillow does),
    then the centre `input_size` square is cut (resize == input_size: no crop margin).
    """

    input_size: int
    resize: int
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255
    channels: str = "RGB"
    train_size: int | None = None  # training crop, where the publisher evaluates at another size


@dataclass(frozen=True)
class PretrainedWeights:
    name: str  # "<model>.<tag>", e.g. "resnet50.tv2_in1k"
    model: str  # resnetlab registry name
    model_kwargs: tuple[tuple[str, object], ...]  # builder arguments besides num_classes
    dataset: str  # "imagenet-1k" | "cifar10" | "cifar100": fixes the classes
    urls: tuple[str, ...]  # where the publisher serves the file (tried in order)
    filename: str  # name in the torch.hub cache (the URL's own name where torch.hub would use it)
    hash_prefix: str | None  # SHA-256 prefix the published file name carries (what torch.hub checks)
    sha256: str | None  # the full digest, where the publisher shows it
    file_format: str  # "torch" (torch.save, read with weights_only=True) | "safetensors"
    layout: str  # tensor names and conventions, see models/layouts.py
    preprocess: Preprocess
    publisher: str
    license: str
    source: str  # the page that documents the file and its accuracy
    top1: float | None  # published top-1 accuracy (%) on the dataset's test/val split
    top5: float | None
    accuracy_note: str  # where the figures come from and at which input size
    file_size_mb: float | None = None  # as published (MB = 10^6 bytes), None if not stated
    num_params: int | None = None  # as published, None if not stated

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def kwargs(self) -> dict:
        return dict(self.model_kwargs)

    @property
    def classes(self) -> list[str]:
        return list(_read_lines(DATASET_CLASSES[self.dataset]))

    @property
    def class_ids(self) -> list[str] | None:
        return list(_read_lines(CLASS_IDS[self.dataset])) if self.dataset in CLASS_IDS else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@lru_cache(maxsize=None)
def _read_lines(filename: str) -> tuple[str, ...]:
    text = (resources.files("resnetlab.models") / "classes" / filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


# ------------------------------------------------------------------ the publishers

TV_PAGE = "https://github.com/pytorch/vision/blob/main/torchvision/models/resnet.py"


def _torchvision(model: str, tag: str, file: str, top1: float, top5: float, size_mb: float, params: int,
                 resize: int) -> PretrainedWeights:
    """torchvision's ResNet<N>_Weights.IMAGENET1K_V1 (tv_in1k) / _V2 (tv2_in1k), values from its
    models/resnet.py (torchvision 0.29.1): url, _metrics acc@1/acc@5, _file_size, num_params,
    ImageClassification(crop_size=224, resize_size=256 or 232), bilinear, ImageNet mean/std."""
    return PretrainedWeights(
        name=f"{model}.{tag}", model=model, model_kwargs=(), dataset="imagenet-1k",
        urls=(f"https://download.pytorch.org/models/{file}",), filename=file,
        hash_prefix=file.rsplit("-", 1)[1].split(".")[0], sha256=None, file_format="torch", layout="torchvision",
        preprocess=Preprocess(224, resize, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        publisher="torchvision", license="BSD-3-Clause (torchvision)", source=TV_PAGE, top1=top1, top5=top5,
        accuracy_note=f"ImageNet-1k val, {resize} px resize + 224 centre crop, from torchvision's weight metadata",
        file_size_mb=round(size_mb * 2**20 / 1e6, 3), num_params=params)  # torchvision's _file_size is in MiB


AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10"


def _akamaster(depth: int, digest: str, test_err: float) -> PretrainedWeights:
    """akamaster/pytorch_resnet_cifar10: option-A CIFAR-10 ResNets (its README table and
    pretrained_models/; the hash suffix was added for torch.hub's load_url, issue #7). Its trainer
    feeds ToTensor() + ImageNet mean/std at 32 px; the README gives test error, not top-5."""
    file = f"resnet{depth}-{digest}.th"
    return PretrainedWeights(
        name=f"resnet{depth}.akamaster_c10", model=f"resnet{depth}", model_kwargs=(), dataset="cifar10",
        urls=(f"{AKAMASTER}/raw/master/pretrained_models/{file}",
              f"https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/master/pretrained_models/{file}"),
        filename=file, hash_prefix=digest, sha256=None, file_format="torch", layout="akamaster",
        preprocess=Preprocess(32, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        publisher="akamaster (Yerlan Idelbayev)", license="BSD-2-Clause", source=AKAMASTER,
        top1=round(100 - test_err, 2), top5=None,
        accuracy_note=f"CIFAR-10 test, 32 px: the README's {test_err}% test error")


CHENYAOFO = "https://github.com/chenyaofo/pytorch-cifar-models"
# The mean/std in the training logs (logs/<dataset>/resnet20/default.log, 'data' section).
CHENYAOFO_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)),
                   "cifar100": ((0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))}


def _chenyaofo(dataset: str, depth: int, digest: str, top1: float, top5: float) -> PretrainedWeights:
    """chenyaofo/pytorch-cifar-models: CIFAR ResNets with projection (option B) shortcuts and
    torchvision names; release assets under releases/download/resnet/; accuracy from its README."""
    file = f"{dataset}_resnet{depth}-{digest}.pt"
    mean, std = CHENYAOFO_STATS[dataset]
    short = "c10" if dataset == "cifar10" else "c100"
    return PretrainedWeights(
        name=f"resnet{depth}.chenyaofo_{short}", model=f"resnet{depth}", model_kwargs=(("shortcut", "B"),),
        dataset=dataset, urls=(f"{CHENYAOFO}/releases/download/resnet/{file}",), filename=file,
        hash_prefix=digest, sha256=None, file_format="torch", layout="chenyaofo",
        preprocess=Preprocess(32, 32, "bilinear", mean, std),
        publisher="chenyaofo", license="BSD-3-Clause", source=CHENYAOFO, top1=top1, top5=top5,
        accuracy_note=f"{'CIFAR-10' if dataset == 'cifar10' else 'CIFAR-100'} test, 32 px, from the README's model zoo")


def _timm(tag: str, sha256: str | None, top1: float, top5: float, eval_size: int, resize: int,
          train_size: int, size_mb: float | None) -> PretrainedWeights:
    """timm's ResNet Strikes Back weights (arXiv:2110.00476) on the Hugging Face hub. Preprocessing
    from timm/models/resnet.py's _rcfg/_r3cfg (bicubic, crop_pct, test_input_size; timm 1.0.31);
    accuracy from the model card's comparison table at the test size; SHA-256 from the hub's Git
    LFS details of model.safetensors (not found for a3: None, so only the format is checked)."""
    name = f"resnet50.{tag}"
    return PretrainedWeights(
        name=name, model="resnet50", model_kwargs=(), dataset="imagenet-1k",
        urls=(f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors",),
        filename=f"{name}-{sha256[:8]}.safetensors" if sha256 else f"{name}.safetensors",
        hash_prefix=sha256[:8] if sha256 else None, sha256=sha256, file_format="safetensors", layout="timm",
        preprocess=Preprocess(eval_size, resize, "bicubic", IMAGENET_MEAN, IMAGENET_STD, train_size=train_size),
        publisher="timm (Ross Wightman)", license="Apache-2.0", source=f"https://huggingface.co/timm/{name}",
        top1=top1, top5=top5,
        accuracy_note=f"ImageNet-1k val at {eval_size} px (trained at {train_size}), from the timm model card",
        file_size_mb=size_mb, num_params=None)


WEIGHTS: tuple[PretrainedWeights, ...] = (
    # The first entry of each model is its default (create_model(name, pretrained=True)).
    _torchvision("resnet18", "tv_in1k", "resnet18-f37072fd.pth", 69.758, 89.078, 44.661, 11689512, 256),
    _torchvision("resnet34", "tv_in1k", "resnet34-b627a593.pth", 73.314, 91.420, 83.275, 21797672, 256),
    _torchvision("resnet50", "tv2_in1k", "resnet50-11ad3fa6.pth", 80.858, 95.434, 97.79, 25557032, 232),
    _torchvision("resnet50", "tv_in1k", "resnet50-0676ba61.pth", 76.130, 92.862, 97.781, 25557032, 256),
    _torchvision("resnet101", "tv2_in1k", "resnet101-cd907fc2.pth", 81.886, 95.780, 170.53, 44549160, 232),
    _torchvision("resnet101", "tv_in1k", "resnet101-63fe2227.pth", 77.374, 93.546, 170.511, 44549160, 256),
    _torchvision("resnet152", "tv2_in1k", "resnet152-f82ba261.pth", 82.284, 96.002, 230.474, 60192808, 232),
    _torchvision("resnet152", "tv_in1k", "resnet152-394f9c45.pth", 78.312, 94.046, 230.434, 60192808, 256),
    _timm("a1_in1k", "773525d5821de224f8f30c33377b7a795d7863e08522698200d3217d3f2a41bb", 81.22, 95.11, 288, 288,
          224, 102.0),
    _timm("a2_in1k", "f531f9aca4dde1b89e9a465c5b9e3b916a2d1b20a216acf3b9473d1e1212ecf6", 80.78, 94.99, 288, 288,
          224, 102.0),
    _timm("a3_in1k", None, 78.06, 93.78, 224, 235, 160, None),
    _akamaster(20, "12fca82f", 8.27),
    _akamaster(32, "d509ac18", 7.37),
    _akamaster(44, "014dd654", 6.90),
    _akamaster(56, "4bfd9763", 6.61),
    _akamaster(110, "1d1ed7c2", 6.32),
    _akamaster(1202, "f3b1deed", 6.18),
    _chenyaofo("cifar10", 20, "4118986f", 92.60, 99.81),
    _chenyaofo("cifar10", 32, "ef93fc4d", 93.53, 99.77),
    _chenyaofo("cifar10", 44, "2a3cabcb", 94.01, 99.77),
    _chenyaofo("cifar10", 56, "187c023a", 94.37, 99.83),
    _chenyaofo("cifar100", 20, "23dac2f1", 68.83, 91.01),
    _chenyaofo("cifar100", 32, "84213ce6", 70.16, 90.89),
    _chenyaofo("cifar100", 44, "ffe32858", 71.63, 91.58),
    _chenyaofo("cifar100", 56, "f2eff4c8", 72.63, 91.94),
)


def _index(entries) -> dict[str, PretrainedWeights]:
    out = {}
    for entry in entries:
        if entry.name in out:
            raise RuntimeError(f"weights {entry.name!r} listed twice")
        out[entry.name] = entry
    return out


_BY_NAME = _index(WEIGHTS)


def list_weights(model: str | None = None) -> list[PretrainedWeights]:
    return [w for w in _BY_NAME.values() if model is None or w.model == model]


def get_weights(name: str) -> PretrainedWeights:
    """The entry called `name`, or a UserError that lists the closest names."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    # Compared in lower case, so that a name typed with capitals suggests itself first.
    lowered = {n.lower(): n for n in _BY_NAME}
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.5)]
    # "resnet20", "resnet50.tv3": that model's own weights first, the closest first
    own = sorted((w.name for w in list_weights(name.split(".", 1)[0].lower())),
                 key=lambda n: -difflib.SequenceMatcher(None, name.lower(), n).ratio())
    close = (own + [c for c in close if c not in own])[:4]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown weights {name!r}{hint} (`resnetlab weights list` shows them all)")


def weights_for(model: str, weights: str) -> PretrainedWeights:
    """Weights for `model` given as a tag ("tv2_in1k") or a full name ("resnet50.tv2_in1k")."""
    if not isinstance(weights, str) or not weights.strip():
        raise UserError(f"weights= takes a tag such as tv2_in1k or a name such as resnet50.tv2_in1k (`resnetlab weights "
                        f"list` shows them), got {weights!r}")
    if "." in weights:
        entry = get_weights(weights)
    elif f"{model}.{weights}" in _BY_NAME:
        entry = _BY_NAME[f"{model}.{weights}"]
    else:
        same_tag = [w for w in _BY_NAME.values() if w.tag == weights]
        entry = same_tag[0] if same_tag else get_weights(f"{model}.{weights}")  # raises, naming close matches
    if entry.model != model:
        own = [w.tag for w in list_weights(model)]
        mine = f"weights for {model}: {', '.join(own)}" if own else f"there are no published weights for {model}"
        raise UserError(f"weights {entry.name!r} are for {entry.model}, not {model}; {mine}")
    return entry


def default_weights(model: str) -> PretrainedWeights:
    found = list_weights(model)
    if not found:
        models = sorted({w.model for w in _BY_NAME.values()}, key=lambda m: (len(m), m))
        raise UserError(f"no published weights for {model!r}; weights exist for {', '.join(models)}")
    return found[0]
