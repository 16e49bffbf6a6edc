"""Datasets, training/test pipelines and class palettes."""
from .datasets import (ADE20K, COCOStuff10k, COCOStuff164k, DATASET_TYPES, CamVid, Cityscapes, FolderDataset,
                       PascalContext, PascalVOC, PascalVOCAug, SegDataset, SyntheticShapes, build_dataset,
                       read_image, read_label)
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TestPipeline, TrainPipeline

__all__ = ["SegDataset", "FolderDataset", "CamVid", "ADE20K", "Cityscapes", "PascalVOC", "PascalVOCAug",
           "PascalContext", "COCOStuff164k", "COCOStuff10k", "SyntheticShapes", "build_dataset", "DATASET_TYPES",
           "read_image", "read_label", "TrainPipeline", "TestPipeline", "IMAGENET_MEAN", "IMAGENET_STD"]
