from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.errors import GridError
from schemas.grid import FCArch, parse_grid

GOOD = """
sweep: s1
dataset: {name: digits_parity_pca, train_size: 100, pca_dim: 10}
architectures:
  - {name: fc5, depth: 5, widths: [2, 3.5, 8]}
  - {name: fc2, depth: 2, widths: [4]}
seeds: 3
training: {max_steps: 100}
"""


def test_expand_gives_one_run_per_arch_width_seed_in_grid_order():
    runs = parse_grid(GOOD).expand()
    assert [(r.arch.name, r.width, r.seed) for r in runs] == [
        (a, w, s) for a, ws in (("fc5", [2, 3.5, 8]), ("fc2", [4])) for w in ws for s in range(3)
    ]
    assert len({r.run_id for r in runs}) == len(runs)


def test_run_id_is_deterministic_and_depends_only_on_what_changes_the_result():
    a = parse_grid(GOOD).expand()
    b = parse_grid(
        GOOD.replace(
            "training: {max_steps: 100}",
            "training: {max_steps: 100}\nresources: {num_cpus: 2, max_retries: 5}\nsweep2: x",
        ).replace("\nsweep2: x", "")
    ).expand()
    assert [r.run_id for r in a] == [r.run_id for r in b]
    other_steps = parse_grid(GOOD.replace("max_steps: 100", "max_steps: 101")).expand()
    assert a[0].run_id != other_steps[0].run_id
    renamed = parse_grid(GOOD.replace("sweep: s1", "sweep: s2")).expand()
    assert a[0].run_id == renamed[0].run_id  # the sweep name is not part of a run's identity
    more_widths = parse_grid(GOOD.replace("[2, 3.5, 8]", "[2, 3.5, 8, 16]")).expand()
    assert {r.run_id for r in a} <= {r.run_id for r in more_widths}


def test_seed_list_and_count():
    grid = parse_grid(GOOD.replace("seeds: 3", "seeds: [7, 3]"))
    assert grid.seed_list == [7, 3]
    assert parse_grid(GOOD).seed_list == [0, 1, 2]


def test_fractional_widths_give_smoothly_varying_layers_and_n_counts_weights_only():
    arch = FCArch(name="a", depth=5, widths=[3.5])
    assert arch.layer_widths(3.5) == [4, 4, 3, 3, 3]  # floor(3.5 + 1 - (i+1)/5)
    assert arch.layer_widths(3.0) == [3] * 5
    # N = d*h0 + h0*h1 + ... + h4*1, no biases
    assert arch.n_params(3.5, 10, 1) == 10 * 4 + 4 * 4 + 4 * 3 + 3 * 3 + 3 * 3 + 3 * 1
    ns = [arch.n_params(h, 10, 1) for h in (3.0, 3.2, 3.4, 3.6, 3.8, 4.0)]
    assert ns == sorted(ns) and len(set(ns)) == len(ns)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("seeds: 3\nfoo: 1", "foo: unknown field"),
        ("seeds: three", "seeds"),
        ("seeds: [1, 2, 1]", "seeds repeat [1]"),
        ("seeds: 0", "seeds must be a count >= 1"),
        ("sweep: s1", None),
    ],
)
def test_top_level_errors_name_the_field(change, expected):
    text = GOOD.replace("seeds: 3", change) if change.startswith("seed") else GOOD
    if expected is None:
        parse_grid(text)
        return
    with pytest.raises(GridError) as info:
        parse_grid(text)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("widths", "expected"),
    [
        ("[]", "widths is empty"),
        ("[0, 2]", ">= 1"),
        ("[-3]", ">= 1"),
        ("[2, 2]", "widths repeat [2.0]"),
        ("[a]", "architectures.0.widths.0"),
    ],
)
def test_width_errors(widths, expected):
    with pytest.raises(GridError) as info:
        parse_grid(GOOD.replace("[2, 3.5, 8]", widths))
    assert expected in str(info.value)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 101])
def test_sweep_name_must_be_a_safe_path_component(name):
    with pytest.raises(GridError) as info:
        parse_grid(GOOD.replace("sweep: s1", f"sweep: '{name}'"))
    assert "sweep" in str(info.value)


def test_every_problem_is_reported_at_once():
    bad = GOOD.replace("seeds: 3", "seeds: [1, 1]\ncolour: red").replace("[2, 3.5, 8]", "[]")
    bad = bad.replace("train_size: 100", "train_size: -5")
    with pytest.raises(GridError) as info:
        parse_grid(bad)
    problems = info.value.problems
    assert len(problems) == 4, problems
    text = str(info.value)
    for part in ("colour: unknown field", "seeds repeat", "widths is empty", "dataset.train_size"):
        assert part in text


def test_malformed_yaml_names_the_line():
    with pytest.raises(GridError) as info:
        parse_grid("sweep: a\ndataset: {name: [\n")
    assert "not valid YAML" in str(info.value) and "line" in str(info.value)


def test_non_mapping_and_missing_fields():
    with pytest.raises(GridError, match="mapping"):
        parse_grid("- a\n- b\n")
    with pytest.raises(GridError) as info:
        parse_grid("sweep: a\n")
    assert "dataset: required field is missing" in str(info.value)
    assert "architectures: required field is missing" in str(info.value)


def test_mnist_needs_a_root_and_unknown_datasets_are_named():
    with pytest.raises(GridError, match="needs `root`"):
        parse_grid(GOOD.replace("digits_parity_pca", "mnist_parity_pca"))
    with pytest.raises(GridError, match="dataset.name"):
        parse_grid(GOOD.replace("digits_parity_pca", "imagenet"))


def test_learning_rate_rule():
    t = parse_grid(
        GOOD.replace("{max_steps: 100}", "{lr0: 0.1, lr_exponent: -1.5, lr_max: 1e-4}")
    ).training
    assert t.learning_rate(10) == pytest.approx(1e-4)  # min(0.1 * 10^-1.5 = 3.2e-3, 1e-4)
    assert t.learning_rate(1000) == pytest.approx(0.1 * 1000**-1.5)


def test_models_are_frozen():
    grid = parse_grid(GOOD)
    with pytest.raises(ValidationError, match="frozen"):
        grid.sweep = "other"  # type: ignore[misc]
