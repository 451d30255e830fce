"""The pieces a grid is made of, one model each: the dataset, an architecture (FC or CNN),
the training, the resources and the checkpoints of a run. Strict: frozen, unknown keys
forbidden, every field described; `schemas.grid` assembles them into a grid file and
`schemas.run` into one run.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from schemas.datasets import DATASETS_WITH_ROOT, FILE_FORMATS, PCA_DATASETS, DataFacts
from schemas.modules import ModuleArch as ModuleArch
from schemas.strict import SAFE_NAME as SAFE_NAME  # re-exported: importable from here as before
from schemas.strict import Strict as Strict
from schemas.strict import check_no_repeats
from schemas.strict import check_safe_name as _check_safe_name

# A dataset's fields that say where its data is read from, not what it is: left out of run
# ids, and refreshed from the grid on every submission.
DATA_LOCATION = ("root", "download", "train", "test")


class DatasetSpec(Strict):
    name: Literal["digits_parity_pca", "mnist_parity_pca", "cifar10", "files"] = Field(
        description="digits_parity_pca (scikit-learn's bundled 8x8 digits, offline), "
        "mnist_parity_pca (torchvision MNIST under `root`), cifar10 (10 classes), or files "
        "(your own table: `train`, `label`, ...; docs/your-data.md).",
    )
    root: str | None = Field(
        default=None,
        description="Folder holding the data (MNIST/raw/... or cifar10 files); relative "
        "paths are taken from the grid file's folder.",
    )
    download: bool = Field(
        default=False, description="Let torchvision download the data into `root` if missing."
    )
    train: str | None = Field(
        default=None,
        description="files: the training pool, a .parquet, .csv or .npz file (NPZ: arrays x "
        "(n, d) and y (n,)); relative to the grid file's folder, absolute, or a URI.",
    )
    test: str | None = Field(
        default=None,
        description="files: a separate test pool with the same columns (default: the test "
        "set comes from `train` after the split).",
    )
    label: str | None = Field(
        default=None, description="files (Parquet, CSV): the column that holds the labels."
    )
    features: list[str] | None = Field(
        default=None,
        description="files (Parquet, CSV): the feature columns (default: every other "
        "numeric column).",
    )
    pca_dim: int | None = Field(
        default=10,
        ge=1,
        description="d: principal components kept (whitened) for *_pca sets; files: PCA "
        "whitening to pca_dim, fitted on the training pool (default for files: none).",
    )
    standardize: bool | None = Field(
        default=None,
        description="files: centre each feature and scale it to unit variance with the P "
        "training samples' mean and std (default for files: true).",
    )
    rescale: bool | None = Field(
        default=None,
        description="files: rescale every sample to norm sqrt(d), as the paper does "
        "(default for files: true).",
    )
    train_size: int = Field(ge=1, description="P: number of training samples.")
    test_size: int | None = Field(
        default=None, ge=1, description="Test samples (default: every sample not in the train set)."
    )
    data_seed: int = Field(default=0, ge=0, description="Seed of the train/test split.")
    label_noise: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="q: a fraction q of the P training labels (round(q P), drawn with "
        "data_seed) replaced by another class (binary: flipped); the test set stays clean.",
    )
    resolved: DataFacts | None = Field(
        default=None,
        description="Set by jamsweep at submit for files (d_in, classes, fingerprint, ...); "
        "never written in a grid.",
    )

    @model_validator(mode="before")
    @classmethod
    def _files_defaults(cls, raw: Any) -> Any:
        """Files read as given: no PCA unless asked, standardised and rescaled unless told
        not to. Filled in here, so a grid that writes a default and one that leaves it out
        are the same experiment (the same run ids)."""
        if isinstance(raw, dict) and raw.get("name") == "files":
            filled = {"pca_dim": None, **raw}
            for key in ("standardize", "rescale"):
                filled[key] = True if filled.get(key) is None else filled[key]
            return filled
        return raw

    def location(self) -> dict[str, object]:
        """Where the data is read from: fields that may change without changing a run's
        result (not part of run ids, refreshed from the grid on every submission)."""
        return {name: getattr(self, name) for name in DATA_LOCATION}

    @model_validator(mode="after")
    def _fields_of_the_dataset(self) -> DatasetSpec:
        if self.name in DATASETS_WITH_ROOT and self.root is None:
            raise ValueError(f"dataset {self.name!r} needs `root`: the folder that holds its files")
        if self.name == "files":
            _check_files_spec(self)
            return self
        given = [k for k in FILES_ONLY if getattr(self, k) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to dataset.name files only, not {self.name!r}; "
                "remove them"
            )
        if self.pca_dim is None and self.name in PCA_DATASETS:
            raise ValueError(f"dataset {self.name!r} needs pca_dim (d >= 1)")
        return self


FILES_ONLY = ("train", "test", "label", "features", "standardize", "rescale")


def _check_files_spec(spec: DatasetSpec) -> None:
    """What a files dataset must say, checked without reading the files (check_dataset
    reads them at submit)."""
    problems = []
    if spec.train is None:
        problems.append("dataset.name files needs `train`: the file of the training pool")
    if spec.root is not None or spec.download:
        problems.append("files reads `train` (and `test`), not `root` or `download`; remove them")
    for what, path in (("train", spec.train), ("test", spec.test)):
        if path is not None and not path.lower().endswith(FILE_FORMATS):
            problems.append(
                f"dataset.{what} {path!r} is not a {', '.join(FILE_FORMATS)} file; convert it "
                "to one of them"
            )
    npz = [p for p in (spec.train, spec.test) if p is not None and p.lower().endswith(".npz")]
    if npz and (spec.label is not None or spec.features is not None):
        problems.append(
            "NPZ files hold arrays x (n, d) and y (n,): leave out `label` and `features`"
        )
    tables = [
        p for p in (spec.train, spec.test) if p is not None and not p.lower().endswith(".npz")
    ]
    if tables and spec.label is None:
        problems.append("a Parquet or CSV pool needs `label`: the column that holds the labels")
    if npz and tables:
        problems.append("give `train` and `test` in the same kind of file (both NPZ, or tables)")
    if spec.features is not None:
        if not spec.features:
            problems.append(
                "dataset.features is empty: name columns, or leave it out (every "
                "other numeric column)"
            )
        dup = sorted({f for f in spec.features if spec.features.count(f) > 1})
        if dup:
            problems.append(f"dataset.features repeats {dup}: name each column once")
        if spec.label is not None and spec.label in spec.features:
            problems.append(f"dataset.features names the label column {spec.label!r}; remove it")
    if spec.test is not None and spec.test_size is not None:
        problems.append(
            "test_size draws the test set from `train`; with a `test` file the whole file is "
            "the test set: remove one of them"
        )
    if problems:
        raise ValueError("; ".join(problems))


class ArchBase(Strict):
    """What every architecture has: a name for the results, and the gain of its init."""

    name: str = Field(description="Label of this architecture in results (arch=NAME).")
    init_gain: float = Field(default=1.0, gt=0, description="Gain of the weight init.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return _check_safe_name(value, "architecture name")


class FCArch(ArchBase):
    kind: Literal["fc"] = Field(default="fc", description="Fully-connected net (the paper's FC).")
    depth: int = Field(default=5, ge=1, description="L: number of hidden layers.")
    widths: list[float] = Field(
        description="h values to sweep; fractional h gives hidden layer i "
        "floor(h + 1 - (i+1)/L) units, so N varies smoothly.",
    )
    init: Literal["orthogonal", "normal"] = Field(
        default="orthogonal",
        description="orthogonal (QR with sign correction) or normal (std = gain/sqrt(fan_in)).",
    )

    @field_validator("widths")
    @classmethod
    def _valid_widths(cls, widths: list[float]) -> list[float]:
        if not widths:
            raise ValueError("widths is empty: list at least one width h >= 1")
        bad = [w for w in widths if not math.isfinite(w) or w < 1]
        if bad:
            raise ValueError(
                f"widths must be finite and >= 1 (every layer needs a unit); got {bad}"
            )
        return check_no_repeats(widths)

    def layer_widths(self, h: float) -> list[int]:
        """Hidden widths for (possibly fractional) h: floor(h + 1 - (i+1)/L), i = 0..L-1.

        The 1e-9 keeps float rounding from flooring exact integers down (3.6 + 1 - 3/5 is
        3.9999999999999996 in floating point, but means 4)."""
        return [math.floor(h + 1 - (i + 1) / self.depth + 1e-9) for i in range(self.depth)]

    def n_params(self, h: float, d_in: int, n_out: int) -> int:
        """N: number of weights (biases excluded), as in the paper."""
        sizes = [d_in, *self.layer_widths(h), n_out]
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


class CNNArch(ArchBase):
    """The paper's CIFAR-10 CNN: 3 convolutions with f channels (ReLU), then one linear layer.

    Arxiv 1901.01608 gives 3 conv layers of f channels, 1 fully-connected layer, Xavier init;
    we found no stated kernel size, stride or padding (neither in the text we could reach nor
    in the authors' published code), so the defaults are a choice: 3x3 kernels, stride 2,
    padding 1, which halve the image at each layer (32 -> 16 -> 8 -> 4) and keep the widest
    nets of the sweep (f = 2048) affordable. They are fields, so a grid can set others."""

    kind: Literal["cnn"] = Field(description="Convolutional net (the paper's CIFAR-10 CNN).")
    widths: list[int] = Field(
        description="f values to sweep: the channels of every convolutional layer."
    )
    depth: int = Field(default=3, ge=1, description="Number of convolutional layers (paper: 3).")
    kernel_size: int = Field(default=3, ge=1, description="Side of the square kernels.")
    stride: int = Field(default=2, ge=1, description="Stride of every convolution.")
    padding: int = Field(default=1, ge=0, description="Zero padding on each side of every image.")
    init: Literal["xavier_uniform", "xavier_normal"] = Field(
        default="xavier_uniform",
        description="Xavier/Glorot init of every weight: uniform with bound "
        "gain*sqrt(6/(fan_in+fan_out)) (Glorot & Bengio's), or normal with std "
        "gain*sqrt(2/(fan_in+fan_out)); biases start at zero.",
    )

    @field_validator("widths")
    @classmethod
    def _valid_widths(cls, widths: list[int]) -> list[int]:
        if not widths:
            raise ValueError("widths is empty: list at least one channel count f >= 1")
        bad = [w for w in widths if w < 1]
        if bad:
            raise ValueError(f"widths (channel counts f) must be >= 1; got {bad}")
        return check_no_repeats(widths)

    def feature_size(self, image_size: int) -> int:
        """Side of the feature maps after the convolutions (0 if the image vanishes)."""
        side = image_size
        for _ in range(self.depth):
            side = (side + 2 * self.padding - self.kernel_size) // self.stride + 1
            if side < 1:
                return 0
        return side

    def n_params(self, f: float, in_channels: int, n_out: int, image_size: int = 32) -> int:
        """N: number of weights (biases excluded): the kernels of the convolutions plus the
        read-out from the f * side^2 features to the n_out outputs."""
        f, k2 = int(f), self.kernel_size**2
        convs = in_channels * f * k2 + (self.depth - 1) * f * f * k2
        return convs + f * self.feature_size(image_size) ** 2 * n_out


def _arch_kind(value: Any) -> str:
    """`kind` picks the architecture model; a grid may leave it out for the FC net."""
    if isinstance(value, dict):
        return str(value.get("kind", "fc"))
    return str(getattr(value, "kind", "fc"))


ArchSpec = Annotated[
    Annotated[FCArch, Tag("fc")]
    | Annotated[CNNArch, Tag("cnn")]
    | Annotated[ModuleArch, Tag("module")],
    Discriminator(
        _arch_kind,
        custom_error_type="arch_kind",
        custom_error_message="kind must be 'fc' (fully-connected), 'cnn' (convolutional) or "
        "'module' (your own torch.nn.Module: `builder: MODULE:FUNCTION`)",
    ),
]


class TrainingSpec(Strict):
    loss: Literal["square_hinge", "hinge", "cross_entropy"] = Field(
        default="square_hinge",
        description="square_hinge: (1/P) sum 1/2 max(0, margin - y f)^2 (the paper's); "
        "hinge: (1/P) sum max(0, margin - y f); cross_entropy: logistic loss.",
    )
    margin: float = Field(default=1.0, ge=0, description="kappa: the hinge margin.")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="adam or sgd.")
    lr0: float = Field(default=0.1, gt=0, description="lr = min(lr0 * h^lr_exponent, lr_max).")
    lr_exponent: float = Field(default=-1.5, description="a in lr = min(lr0 * h^a, lr_max).")
    lr_max: float = Field(default=1e-4, gt=0, description="Upper bound of the learning rate.")
    adam_eps: float = Field(default=1e-8, gt=0, description="Adam's epsilon.")
    batch_size: int | None = Field(
        default=None, ge=1, description="Mini-batch size (default: full batch, as the paper)."
    )
    max_steps: int = Field(default=2_000_000, ge=1, description="Step budget of one run.")
    dtype: Literal["float64", "float32"] = Field(
        default="float64", description="float64 (default; float32 changes runs near jamming)."
    )
    delta_tol: float = Field(
        default=1e-12,
        ge=0,
        description="A constraint counts as satisfied when its Delta <= delta_tol; "
        "0 gives the authors' strict rule.",
    )
    subtract_init: bool = Field(
        default=False,
        description="Train f - f0, f0 the net's output at initialisation (paper, footnote 5).",
    )
    snapshot_steps: list[int] = Field(
        default_factory=list, description="Steps at which outputs f are stored as well."
    )

    @field_validator("snapshot_steps")
    @classmethod
    def _valid_snapshots(cls, steps: list[int]) -> list[int]:
        if any(s < 0 for s in steps):
            raise ValueError(f"snapshot_steps must be >= 0; got {steps}")
        return sorted(set(steps))

    def learning_rate(self, width: float) -> float:
        return min(self.lr0 * width**self.lr_exponent, self.lr_max)


class ResourceSpec(Strict):
    num_cpus: float = Field(default=1, gt=0, description="CPUs Ray reserves for one run.")
    num_gpus: float = Field(
        default=0, ge=0, description="GPU fraction for one run (e.g. 0.25 packs four per GPU)."
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a run whose worker or node died or that hit an I/O error.",
    )
    pack: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=1,
        description="Seeds of one FC width trained as one batched model in one task (whose "
        "num_cpus/num_gpus these are): 1, a count, or 'auto' (by device and width; README).",
    )


class CheckpointSpec(Strict):
    every_steps: int | None = Field(
        default=None, ge=1, description="Save the training state every this many steps."
    )
    every_s: float = Field(
        default=60.0, gt=0, description="Save the training state at least this often (seconds)."
    )
    keep: bool = Field(default=False, description="Keep checkpoints after the run's results land.")
    keep_models: bool = Field(
        default=True,
        description="Store every finished run's final weights (a state_dict, models/...) "
        "beside its results; `open_sweep(path).model(run_id)` loads them.",
    )
