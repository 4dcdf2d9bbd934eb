"""Classify image files with a checkpoint: the same preprocessing as evaluation, batched.

A checkpoint carries its model name, classes, normaliser, input size and eval resize, so nothing
has to be repeated. Images go through the data package's own evaluation loader (in-memory arrays
for small-image models and images, decoded files otherwise, decided per image), so a prediction
equals what `resnetlab eval` scored for the same file in a folder of its kind. The fast path
(inference/fastpath.py) folds BatchNorm into the convolutions, runs channels_last and, where that
measured faster, compiled (bf16 where the CPU's bf16 is fast);
`quantized` makes an int8 copy for the CPU, calibrated on real images; `top1_agreement` measures
either against the plain fp32 model.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from resnetlab.errors import ResnetlabWarning, UserError, option
from resnetlab.models.quantize import CALIBRATION_IMAGES

CHUNK = 1024  # images decoded at a time: bounds memory for large folders
SMALL_DATASETS = ("cifar10", "cifar100", "synthetic")  # trained on in-memory arrays, never resized to eval_resize


def whole_view(dataset: str, augment: str, family: str) -> bool:
    """Whether prediction sees each photo whole, resized to the input size, as the run's evaluation read its
    data: in-memory arrays (CIFAR, synthetic) and cifar/none-augmented CIFAR-family nets, whose training
    decoded images straight to the input size; else (imagenet/rrc) the "shorter side to eval_resize, centre
    crop" of ImageNet evaluation, a CIFAR-family net trained on a photo folder with them too."""
    return dataset in SMALL_DATASETS or (family == "cifar" and augment not in ("imagenet", "rrc"))


@dataclass
class Predictor:
    """A checkpoint's (or published weights') model ready for inference, with its preprocessing."""

    model: nn.Module  # on rt.device, eval mode (BN folded when built with fuse=True)
    normalizer: nn.Module
    classes: list[str]
    data_cfg: object  # the checkpoint's DataConfig (image_size, eval_resize, normalize ...)
    rt: object  # engine Runtime (device, precision, channels_last)
    # Preprocessing of in-memory small-image datasets (resize to the input size only) for every
    # image; otherwise chosen per image by its size (`batches`).
    small: bool
    source: str = ""
    int8: bool = False  # model made by models.quantize.quantize_int8 (rt is then fp32 NCHW on the CPU)
    # The unreadable files of each thread's last batches() call: threads that share a Predictor (a service's
    # one resnetlab.load) read their own, never another call's (it had put a generic reason on a bad file).
    _calls: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:  # copy.deepcopy and pickle: the thread-local state is not the copy's
        return {k: v for k, v in self.__dict__.items() if k != "_calls"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _calls=threading.local())

    @property
    def failed(self) -> list:
        """(path, reason) of the unreadable files of this thread's last batches() call, in file order."""
        return [(path, reason) for _, path, reason in getattr(self._calls, "failed", [])]

    @property
    def failed_at(self) -> set:
        """Their indices into that call's paths."""
        return getattr(self._calls, "failed_at", set())

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else self.rt.precision

    @classmethod
    def from_checkpoint(cls, checkpoint, device: str = "auto", precision: str = "auto", fuse: bool = True,
                        channels_last: str = "true") -> "Predictor":
        """precision auto: the fastest path that keeps fp32's top-1 answers on this machine
        (inference.fastpath.choose_path: compiled bf16 channels_last on CPUs with AMX or AMD's
        AVX-512 BF16, folded fp32 channels_last elsewhere); fp32 is exact fp32."""
        from resnetlab.engine.checkpoint import model_from_checkpoint
        from resnetlab.engine.sources import load_source
        from resnetlab.inference.fastpath import prepare_inference
        from resnetlab.models import model_info

        artifact, path = load_source(checkpoint)
        model, normalizer, classes, cfg = model_from_checkpoint(artifact)
        model, rt = prepare_inference(model, artifact.model_name, device, precision, cfg.data.image_size, fuse,
                                      channels_last)
        small = whole_view(cfg.data.dataset, cfg.data.augment, model_info(artifact.model_name).family)
        return cls(model, normalizer.to(rt.device), classes, cfg.data, rt, small, path)

    def quantized(self, paths: list[str], images: int = CALIBRATION_IMAGES, batch_size: int = 64) -> "Predictor":
        """An int8 copy of this CPU fp32 predictor, its activation ranges calibrated on up to
        `images` of `paths`, spread evenly (centre views, the checkpoint's preprocessing)."""
        from resnetlab.models.quantize import calibration_sample, quantize_int8

        if self.rt.device.type != "cpu" or self.rt.precision != "fp32" or self.int8:
            raise UserError("int8 quantization starts from an fp32 predictor on the CPU "
                            + option("(--device cpu)", '(device="cpu", precision="fp32")'))
        if images < 1:
            raise UserError(f"int8 calibration needs at least one image, got {images}")
        sample = [paths[i] for i in calibration_sample(len(paths), images)]
        if not sample:
            raise UserError("int8 calibration: no image files to calibrate on "
                            f"({option('--calibrate names none', 'the paths given name none')})")
        calibration = [self.normalizer(views[0]).float() for views, _ in self.batches(sample, "center", batch_size)]
        if not calibration:
            raise UserError(f"int8 calibration: none of the {len(sample)} calibration images could be read")
        for path, reason in self.failed:  # calibrated on fewer images than asked: said, as predict says its skips
            warnings.warn(f"int8 calibration skipped {path}: {reason}", ResnetlabWarning, stacklevel=2)
        # On CPUs where auto compiles fp32 (AVX2, AVX-512 at large sizes) the model is a FastModel:
        # quantize the folded eager network inside it, never the compiled package's wrapper.
        model = quantize_int8(getattr(self.model, "eager", self.model), calibration)
        rt = replace(self.rt, channels_last=False)  # the quantized kernels take NCHW fp32 and pick their own layout
        return replace(self, model=model, rt=rt, int8=True)

    def reference(self, checkpoint=None) -> "Predictor":
        """The plain fp32, unfused, NCHW predictor of the same checkpoint (for agreement checks)."""
        return Predictor.from_checkpoint(checkpoint or self.source, device=str(self.rt.device), precision="fp32",
                                         fuse=False, channels_last="false")

    def batches(self, paths: list, protocol: str = "center", batch_size: int = 64):
        """Yield (views, indices into paths) for the readable files (or PIL images); bad files go to
        self.failed (their indices to self.failed_at), of this thread. Each image's own size decides how it is read,
        never its companions': a small one (<= 64 px) whole at its own size, as a folder of small
        images is; a photo by the evaluation's resize and centre crop (or whole, for a network of
        small images). Images read alike are batched together, so batches come in file order only
        where one kind of image does (`in_file_order` restores it)."""
        self._calls.failed, self._calls.failed_at = [], set()
        cfg = replace(self.data_cfg, skip_bad=True)
        for start in range(0, len(paths), CHUNK):
            groups: dict = {}
            for i, path in enumerate(paths[start:start + CHUNK], start):
                groups.setdefault(small_image_side(path), []).append(i)
            for side, members in groups.items():
                yield from self._read([paths[i] for i in members], members, side, cfg, protocol, batch_size)

    def _read(self, files: list, members: list[int], side: int | None, cfg, protocol: str, batch_size: int):
        from resnetlab.data import ArrayDataset, FileDataset, LoaderSpec, load_images, make_eval_loader

        index = torch.tensor(members)
        if side is not None or self.small:
            images, bad = load_images(files, side or cfg.image_size, side or cfg.image_size, cfg.interpolation)
        else:
            images, bad = None, []
        unreadable = {p for p, _ in bad}
        readable = torch.tensor([str(f) not in unreadable for f in files])
        dataset = (FileDataset(files, index, self.classes, warn_bad=False) if images is None  # listed in self.failed
                   else ArrayDataset(images, index[readable], self.classes))
        if len(dataset):
            loader = make_eval_loader(dataset, cfg, LoaderSpec(batch_size, device=self.rt.device), protocol)
            yield from loader
            bad += loader.skipped
        why = dict(bad)
        failed = [(i, str(f)) for i, f in zip(members, files) if str(f) in why]  # str: PIL images too
        self._calls.failed_at |= {i for i, _ in failed}
        self._calls.failed = sorted(self._calls.failed + [(i, f, why[f]) for i, f in failed])

    @torch.no_grad()
    def probs(self, views: list) -> torch.Tensor:
        """Mean softmax over each image's views (as `batches` gives them) -> (B, num_classes) float32."""
        from resnetlab.engine.scoring import predict_views

        return predict_views(self.model, self.normalizer, list(views), self.rt)

    @torch.no_grad()
    def embeddings(self, views: list) -> torch.Tensor:
        """Pooled last feature map, averaged over each image's views: (B, num_features) float32."""
        from resnetlab.data.views import mean_over_views
        from resnetlab.engine.runtime import autocast, to_input
        from resnetlab.inference.fastpath import embeddings

        if self.int8:
            raise UserError("embeddings come from the fp32 model; the int8 model has only its forward pass")

        def embed(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.rt):
                return embeddings(self.model, to_input(self.normalizer(x), self.rt)).float()

        return mean_over_views(views, embed)


def predict_files(predictor: Predictor, paths: list[str], topk: int = 5, protocol: str = "center",
                  batch_size: int = 64, progress=None) -> tuple[list[dict], list[dict]]:
    """(results, failed): results in the order of `paths`, each {"file", "top": [{"class", "index", "prob"}]};
    failed: [{"file", "error"}] for files that could not be read as images. progress(done, total): see `counted`."""
    found = dict(iter_predictions(predictor, paths, topk, protocol, batch_size, progress))
    results = [{"file": paths[i], "top": found[i]} for i in sorted(found)]
    return results, failures(predictor)


def iter_predictions(predictor: Predictor, paths: list[str], topk: int = 5, protocol: str = "center",
                     batch_size: int = 64, progress=None):
    """(index into paths, top-k [{"class", "index", "prob"}]) of each readable file, batch by batch
    in file order, so a caller can show each result as it comes; unreadable files are skipped (see
    `failures` once the iteration has ended)."""
    if topk < 1:
        raise UserError(f"{option('--topk', 'topk')} must be at least 1, got {topk}")
    k = min(topk, len(predictor.classes))

    def tops(views, idx):
        p, top = ranked(predictor.probs(views), k)
        for i, probs, labels in zip(idx.tolist(), p.tolist(), top.tolist()):
            yield i, [{"class": predictor.classes[c], "index": c, "prob": q} for c, q in zip(labels, probs)]

    batches = counted(predictor.batches(paths, protocol, batch_size), len(paths), progress)
    yield from in_file_order(predictor, (item for batch in batches for item in tops(*batch)))


def ranked(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices) of the k most probable classes, best first. topk breaks exact ties
    (bf16 makes some) differently for each k, so the first five are evaluation's own call
    (engine.evaluate._topk) whatever k is: the labels printed, --verify's agreement and eval all agree."""
    from resnetlab.engine.evaluate import _topk

    top = _topk(probs)
    if k > top.shape[1]:  # the others, ranked after those five
        top = torch.cat([top, probs.scatter(1, top, -1.0).topk(k - top.shape[1], dim=1).indices], dim=1)
    top = top[:, :k]
    return probs.gather(1, top), top


def counted(batches, total: int, progress=None):
    """`predictor.batches` as they are, calling progress(images read so far, total) after each."""
    done = 0
    for views, idx in batches:
        yield views, idx
        done += len(idx)
        if progress:
            progress(done, total)


def in_file_order(predictor: Predictor, items):
    """(index, result) items of `predictor.batches` in index order, each given as soon as every file
    before it has its result or is known unreadable (a folder of one kind of image: batch by batch)."""
    pending, following = {}, 0
    for i, result in items:
        pending[i] = result
        while following in pending or following in predictor.failed_at:
            if following in pending:
                yield following, pending.pop(following)
            following += 1
    yield from sorted(pending.items())


def failures(predictor: Predictor) -> list[dict]:
    """[{"file", "error"}] of the files the last iteration could not read as images."""
    return [{"file": f, "error": reason} for f, reason in predictor.failed]


def all_probs(predictor: Predictor, paths: list[str], protocol: str = "center", batch_size: int = 64):
    """(indices of readable files, (N, num_classes) probabilities) in file order."""
    idx, probs = [], []
    for views, i in predictor.batches(paths, protocol, batch_size):
        idx.append(i.cpu())
        probs.append(predictor.probs(views).cpu())
    if not idx:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, len(predictor.classes))
    idx, order = torch.cat(idx).sort()
    return idx, torch.cat(probs)[order]


def top1_agreement(fast: Predictor, paths: list[str], protocol: str = "center", batch_size: int = 64) -> dict:
    """How often the fast path (folded BN, bf16, channels_last) picks the same class as plain fp32."""
    from resnetlab.inference.fastpath import FastModel

    _, p_fast = all_probs(fast, paths, protocol, batch_size)
    _, p_ref = all_probs(fast.reference(), paths, protocol, batch_size)
    if len(p_fast) == 0:
        return {"n": 0, "top1_agreement": float("nan"), "max_abs_prob_diff": float("nan")}
    same = (ranked(p_fast, 1)[1] == ranked(p_ref, 1)[1]).double().mean().item()  # the top-1 labels printed
    return {"n": len(p_fast), "top1_agreement": 100.0 * same, "max_abs_prob_diff": (p_fast - p_ref).abs().max().item(),
            "precision": fast.precision, "channels_last": fast.rt.channels_last,
            "compiled": isinstance(fast.model, FastModel)}


def small_image_side(path) -> int | None:
    """An image's (path's or PIL image's) larger side when it is at most SMALL_SIDE px, else None, as
    for a file whose header cannot be read (decoding it says why)."""
    from resnetlab.data.decode import header_size
    from resnetlab.data.folder import SMALL_SIDE

    size = header_size(path)
    return max(size) if size and min(size) and max(size) <= SMALL_SIDE else None
