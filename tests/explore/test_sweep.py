"""Sweep files: expansion, matching, the pre-flight check, the dry-run grid and launcher commands."""

import dataclasses
import importlib.util
import re

import pytest
from cli_helpers import ROOT, run_module

from elm_jax.config import from_config_dict
from elm_jax.errors import ConfigError
from elm_jax.explore.costs import model_costs
from elm_jax.explore.results import grouped, to_markdown
from elm_jax.explore.sweep import _preflight, config_hash, expand, load_config_file, parse_sweep

ABLATION = "experiments/ablations/layerwise_vs_uniform.py"
SWEPT = {"model.qkv_multipliers", "model.ffn_multipliers", "train.seed"}


@pytest.fixture(scope="module")
def ablation():
    sweep = parse_sweep(load_config_file(str(ROOT / ABLATION)), ABLATION)
    return sweep, expand(sweep, "/tmp/nowhere")


def test_cells_match_the_base_within_one_percent_and_differ_only_where_swept(ablation):
    sweep, cells = ablation
    base = model_costs(sweep.base.model, seq_len=128).params("non_embedding")
    assert [c.name for c in cells][:4] == ["openelm_linear-seed0", "openelm_linear-seed1",
                                           "openelm_linear-seed2", "uniform-seed0"]
    assert len(cells) == 12 and len({c.config.train.run_dir for c in cells}) == 12
    for cell in cells:
        params = model_costs(cell.config.model, seq_len=128).params("non_embedding")
        assert abs(params / base - 1) <= 0.01, cell.name
        assert set(cell.differs) - {"name", "train.run_dir"} <= SWEPT, cell.name
        assert cell.config.train.seed == cell.values["train.seed"]
        assert cell.config.data == sweep.base.data  # the same tokens in every cell
    shapes = {c.labels["schedule"]: [s.q_heads for s in c.config.model.layer_shapes()] for c in cells}
    assert shapes["uniform"] == [6] * 8 and shapes["reverse"] == shapes["openelm_linear"][::-1]


def test_dry_run_lists_every_cell_with_its_costs(tmp_path):
    out = run_module("elm_jax.cli.sweep", f"--sweep={ABLATION}", "--dry-run", f"--out={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if re.match(r"^\w+-seed\d ", line)]
    assert len(rows) == 12
    for row in rows:
        name, params, versus, mflops, state, *differs = row.split()
        assert abs(float(versus.rstrip("%"))) <= 1.0 and state == "new"
        fields = {d.split("=")[0] for d in differs} - {"(the", "base)"}
        assert fields <= SWEPT, row
    assert "only swept fields differ from the base (checked)" in out.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_cell_experiment_rebuilds_the_same_config_for_launched_hosts(ablation):
    _, cells = ablation
    spec = importlib.util.spec_from_file_location("sweep_cell", ROOT / "experiments/sweep_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cell = cells[4]
    rebuilt = from_config_dict(module.get_config(f"{ROOT / ABLATION}@{cell.name}"))
    assert config_hash(rebuilt) == config_hash(cell.config)
    with pytest.raises(ConfigError, match="no cell 'linear-seed9'"):
        module.get_config(f"{ROOT / ABLATION}@linear-seed9")


def test_launch_dry_run_prints_each_cells_launcher_commands(tmp_path):
    # --signal-lead: slurm.py would otherwise import jax per cell to size it from the model
    out = run_module("elm_jax.cli.sweep", f"--sweep={ABLATION}", "--dry-run", "--launch=slurm",
                     f"--out={tmp_path}", "--", "--nodes=2", "--gpus-per-node=4",
                     "--signal-lead=300")
    assert out.returncode == 0, out.stderr
    scripts = out.stdout.split("#SBATCH --job-name=")[1:]
    assert len(scripts) == 12
    assert scripts[0].startswith("layerwise_vs_uniform-openelm_linear-seed0\n#SBATCH --nodes=2")
    assert (f"--config=experiments/sweep_cell.py:{ABLATION}@tapered-seed2 "
            f"--config.train.run_dir={tmp_path}/tapered-seed2-") in scripts[-1]


def test_launch_refuses_command_line_overrides_of_the_sweep():
    out = run_module("elm_jax.cli.sweep", f"--sweep={ABLATION}", "--sweep.base.train.steps=3",
                     "--dry-run", "--launch=ssh", "--", "--hosts=localhost")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: --sweep.* overrides cannot travel")


def test_bad_sweep_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from elm_jax.explore.sweep import load_config_file\n"
                   "def get_config(arg=None):\n"
                   f"    sweep = load_config_file({str(ROOT / ABLATION)!r})\n"
                   "    sweep.axes = [{'field': 'train.sed', 'values': [0, 1]}]\n"
                   "    sweep.compare = {}\n"
                   "    return sweep\n")
    out = run_module("elm_jax.cli.sweep", f"--sweep={bad}", "--dry-run")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: sweep axis field 'train.sed' is not a config field; known in that section: b1, b2, ")


def test_preflight_refuses_a_cell_that_differs_outside_the_axes(ablation):
    sweep, cells = ablation
    stray = dataclasses.replace(cells[1], differs={**cells[1].differs, "train.peak_lr": (3e-3, 1e-3)})
    with pytest.raises(ConfigError, match="openelm_linear-seed1 differs from the base in field.s. that "
                                          "are not swept: train.peak_lr"):
        _preflight(sweep, [cells[0], stray])


def test_grouped_comparison_pairs_cells_by_seed(ablation):
    sweep, _ = ablation
    losses = {"openelm_linear": [4.0, 4.2, 4.1], "uniform": [4.1, 4.4, 4.1]}
    rows = [{"cell": f"{group}-seed{seed}", "group": group, "train.seed": seed, "status": "done",
             "val_loss": loss} for group, values in losses.items() for seed, loss in enumerate(values)]
    rows.append({"cell": "reverse-seed0", "group": "reverse", "train.seed": 0, "status": "partial",
                 "val_loss": 9.0})  # unfinished cells are left out
    reference, uniform = grouped(sweep, rows)
    assert reference.label == "openelm_linear" and reference.difference is None
    assert (uniform.summary.n, uniform.summary.mean) == (3, pytest.approx(4.2))
    assert uniform.difference.mean == pytest.approx(0.1) and uniform.difference.n == 3
    assert uniform.difference.low == pytest.approx(0.0) and uniform.difference.high == pytest.approx(0.2)
    table = to_markdown(sweep, [], [reference, uniform])
    assert "| uniform | 3 | 4.2000 ± 0.1732 | +0.1000 [+0.0000, +0.2000] (n=3) |" in table
