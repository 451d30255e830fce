"""The datasets jamsweep knows, what an architecture needs to know of each, and the facts of
a user's files (`DataFacts`) that are resolved once, at submit, and travel in every RunSpec."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

DATASETS_WITH_ROOT = ("mnist_parity_pca", "cifar10")  # read from files under `root`
PCA_DATASETS = ("digits_parity_pca", "mnist_parity_pca")  # flat whitened inputs: FC nets
FLAT_DATASETS = (*PCA_DATASETS, "files")  # flat inputs (n, d): what FC nets take
FILE_FORMATS = (".parquet", ".csv", ".npz")  # what `dataset: {name: files}` reads
IMAGE_SHAPES = {"cifar10": (3, 32, 32)}  # (channels, height, width) of the image sets: CNNs
N_OUTPUTS = {  # outputs of the net for each built-in dataset (files: from its labels)
    "digits_parity_pca": 1,
    "mnist_parity_pca": 1,
    "cifar10": 10,
}
LABEL_MAPS = {  # how each built-in dataset's labels become the targets (manifest, show)
    "digits_parity_pca": "even digit -> -1, odd digit -> +1",
    "mnist_parity_pca": "even digit -> -1, odd digit -> +1",
    "cifar10": "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck -> 0..9",
}

Label = bool | int | float | str  # one value of a label column, as JSON keeps it


class DataFacts(BaseModel):
    """What a files dataset's contents decide, read once at submit (`workers.data.
    check_dataset`) and carried in every RunSpec (`dataset.resolved`), so that N is known
    before anything trains and no worker or reducer derives it again. Written by one
    version, read by another: lenient."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    features: list[str] = Field(
        description="The feature columns read, in order ([] for NPZ: every column of x)."
    )
    d_in: int = Field(description="Input dimension the net sees (pca_dim when PCA is on).")
    classes: list[Label] = Field(
        description="The label values of the training pool, sorted: two -> -1, +1 (one "
        "output); K -> class ids 0..K-1 (K outputs)."
    )
    n_train_rows: int = Field(description="Rows of the training pool file.")
    n_test_rows: int | None = Field(default=None, description="Rows of the test file, if any.")
    fingerprint: str = Field(
        description="sha256 of the values used (features as float64, labels), train then "
        "test file: the run identity follows the data, not where it is read from."
    )

    @property
    def n_outputs(self) -> int:
        return 1 if len(self.classes) == 2 else len(self.classes)

    @property
    def label_map(self) -> str:
        """How the label values become targets, e.g. "'B' -> -1, 'M' -> +1"."""
        targets = ["-1", "+1"] if len(self.classes) == 2 else range(len(self.classes))
        return ", ".join(
            f"{json.dumps(c)} -> {t}" for c, t in zip(self.classes, targets, strict=True)
        )
