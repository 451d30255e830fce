"""`jamsweep init`: a commented starter grid per dataset, small enough to run on a laptop,
with every field a new user is likely to change explained where it stands."""

from __future__ import annotations

import enum
import os
from pathlib import Path

from schemas.errors import JamsweepError
from schemas.grid import parse_grid


class StarterDataset(str, enum.Enum):
    """The starter grids `jamsweep init --dataset` writes."""

    MNIST = "mnist"
    DIGITS = "digits"
    CIFAR10 = "cifar10"


DATASETS = tuple(d.value for d in StarterDataset)

_HEADER = """\
# A jamsweep grid: one training per (architecture, width, seed). Run it with
#   jamsweep submit {file} --dry-run     # check it, list the runs, write nothing
#   jamsweep submit {file}               # train on this machine (embedded Ray)
#   jamsweep show {sweep_path}           # grid, N*, fits, where the figures are
# Every field: README.md, "The grid file". Unknown keys are refused, not ignored.
sweep: {sweep}                   # the folder name under the results location
# results: /path/or/s3://bucket/prefix   # default: $JAMSWEEP_RESULTS, else ./results
"""

_FC_TRAINING = """\
seeds: 3                         # seeds 0..2 at every width (or a list: [0, 3, 7])
training:                        # the paper: lr0 0.1, lr_exponent -1.5, lr_max 1e-4, 2e6 steps
  loss: square_hinge             # square_hinge | hinge | cross_entropy
  margin: 1.0
  optimizer: adam                # full-batch Adam
  lr0: 0.1                       # lr = min(lr0 * h^lr_exponent, lr_max)
  lr_exponent: -1.5
  lr_max: 0.01                   # raised from the paper's 1e-4 so that runs end in minutes
  max_steps: 10000               # a run stops earlier once every training point has margin 1
  dtype: float64                 # float32 changes runs near jamming
resources:
  num_cpus: 1                    # per run; num_gpus: 0.25 packs 4 runs on one GPU
  max_retries: 2                 # retries of what a retry can fix (a dead worker, an I/O error)
"""

_BODY = {
    "digits": """\
dataset:
  name: digits_parity_pca        # scikit-learn's 8x8 digits (ships with it): no download
  pca_dim: 10                    # d: inputs are the first d whitened principal components
  train_size: 500                # P; the test set is every other image (1297)
  data_seed: 0
architectures:                   # fully connected, depth 5, ReLU; N counts the weights
  - name: fc5
    depth: 5
    widths: [3, 4, 5, 6, 8, 12, 16, 24]   # h; fractional widths are allowed (4.5)
""",
    "mnist": """\
dataset:
  name: mnist_parity_pca         # MNIST, label = parity of the digit
  root: {root}                   # the folder holding MNIST/raw (relative to this file)
  pca_dim: 10                    # d: inputs are the first d whitened principal components
  train_size: 1000               # P
  test_size: 10000               # null: every image not in the training set
  data_seed: 0
architectures:                   # fully connected, depth 5, ReLU; N counts the weights
  - name: fc5
    depth: 5
    widths: [5, 6, 7, 8, 10, 12, 16, 24]  # h: N* is near h = 8 (N ~ 350) at P = 1000
""",
}

_CIFAR = """\
dataset:
  name: cifar10
  root: {root}                   # the folder holding train/ and test/ (relative to this file)
  train_size: 500                # P, class-balanced
  test_size: 1000
  data_seed: 0
architectures:                   # the paper's CNN: 3 conv layers of f channels, 1 linear layer
  - kind: cnn
    name: cnn3
    widths: [2, 3, 4, 6, 8, 12, 16, 24]   # f, the channels
seeds: 3                         # seeds 0..2 per width (or a list: [0, 3, 7])
training:
  loss: hinge                    # linear multi-class hinge, as the paper
  margin: 1.0
  optimizer: sgd                 # plain SGD, no momentum, weight decay or augmentation
  lr0: 1.0                       # lr = min(lr0 * f^lr_exponent, lr_max) = min(1/f, 0.05)
  lr_exponent: -1.0
  lr_max: 0.05
  batch_size: 250
  max_steps: 2000
  dtype: float32                 # 3-6x faster convolutions on a CPU
resources:
  num_cpus: 1
  max_retries: 1
"""


def starter_grid(dataset: str, *, sweep: str, file: str, root: str | None) -> str:
    """The commented starter grid for `dataset` (mnist | digits | cifar10)."""
    if dataset not in DATASETS:
        raise JamsweepError(f"no starter grid for {dataset!r}; there are: {', '.join(DATASETS)}")
    if dataset == "digits" and root is not None:
        raise JamsweepError("--root does not apply to digits: scikit-learn ships that dataset")
    default_root = {"mnist": "data", "cifar10": "data/cifar10-jpeg"}.get(dataset)
    body = _CIFAR if dataset == "cifar10" else _BODY[dataset] + _FC_TRAINING
    sweep_path = f"results/{sweep}"
    head = _HEADER.format(file=file, sweep=sweep, sweep_path=sweep_path)
    return head + body.format(root=root or default_root)


def write_starter(
    path: str, *, dataset: str, sweep: str | None = None, root: str | None = None, force: bool
) -> str:
    """Write the starter grid to `path` (not over an existing file unless `force`); a
    relative `root` is taken from the current folder and written relative to the grid's
    folder, as the grid file reads it. Returns the text written."""
    target = Path(path)
    if target.exists() and not force:
        raise JamsweepError(f"{path} exists; pick another file name or pass --force")
    if root is not None and not Path(root).is_absolute() and "://" not in root:
        root = os.path.relpath(Path(root).absolute(), target.absolute().parent)
    text = starter_grid(dataset, sweep=sweep or target.stem, file=path, root=root)
    parse_grid(text, source=path)  # a starter that does not validate is a bug: fail here
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as exc:
        raise JamsweepError(f"cannot write {path}: {exc.strerror}") from None
    return text
