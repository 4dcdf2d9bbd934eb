"""Datasets, augmentation and fast batched loading (issue 3).

    bundle = build_data(cfg.data, seed=cfg.train.seed)
    loader = make_train_loader(bundle.train, cfg.data, LoaderSpec(batch_size=128), seed=0, epoch=e)
    for x, y in loader:                     # uint8 (B, 3, H, W), int64 (B,)
        logits = model(bundle.normalizer(x))
"""
from .augment import crop_flip, lighting, multiscale_sides, ten_crop
from .build import DataBundle, build_data, describe, fit_normalizer
from .cifar import load_cifar
from .datasets import ArrayDataset, FileDataset
from .decode import load_images
from .loaders import EvalLoader, LoaderSpec, TrainLoader, make_eval_loader, make_train_loader
from .normalize import Normalizer
from .synthetic import synthetic

__all__ = ["ArrayDataset", "DataBundle", "EvalLoader", "FileDataset", "LoaderSpec", "Normalizer", "TrainLoader", "build_data",
           "crop_flip", "describe", "fit_normalizer", "lighting", "load_cifar", "load_images", "make_eval_loader",
           "make_train_loader", "multiscale_sides", "synthetic", "ten_crop"]
