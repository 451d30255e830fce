"""The datasets jamsweep knows, and what an architecture needs to know of each."""

from __future__ import annotations

DATASETS_WITH_ROOT = ("mnist_parity_pca", "cifar10")  # read from files under `root`
PCA_DATASETS = ("digits_parity_pca", "mnist_parity_pca")  # flat whitened inputs: FC nets
IMAGE_SHAPES = {"cifar10": (3, 32, 32)}  # (channels, height, width) of the image sets: CNNs
N_OUTPUTS = {  # outputs of the net for each dataset
    "digits_parity_pca": 1,
    "mnist_parity_pca": 1,
    "cifar10": 10,
}
