"""Reading run directories back: resumed histories, torn lines, alignment of curves."""

import json

import numpy as np
import pytest

from elm_jax.config import default_config, from_config_dict, to_config_dict
from elm_jax.errors import ConfigError
from elm_jax.explore.costs import model_costs
from elm_jax.explore.runs import lineage, load_run, mean_curve


def write_run(path, records, steps=100, tail=""):
    cd = default_config()
    cd.model.update(vocab_size=256, num_layers=2, model_dim=64, head_dim=16)
    cd.data.update(seq_len=32, pad_id=255)
    cd.train.update(steps=steps, batch_size=4)
    path.mkdir()
    (path / "config.json").write_text(to_config_dict(from_config_dict(cd)).to_json())
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_lineage_drops_records_a_resume_rewound_past():
    records = [{"step": s, "loss": float(s)} for s in (10, 20, 30)]
    records += [{"step": 20, "loss": 2.0}, {"step": 30, "loss": 3.0}, {"step": 40, "loss": 4.0}]
    assert [(r["step"], r["loss"]) for r in lineage(records)] == [(10, 10.0), (20, 2.0), (30, 3.0),
                                                                  (40, 4.0)]


def test_curves_align_by_step_tokens_flops_and_fraction(tmp_path):
    records = [{"step": 50, "loss": 5.0, "val_loss": 5.5, "step_time": 0.5},
               {"step": 100, "loss": 4.0, "val_loss": 4.5, "step_time": 0.25}]
    run = load_run(write_run(tmp_path / "run", records))
    assert run.finished and run.final("val_loss") == 4.5 and run.final("missing") is None
    per_token = model_costs(run.config.model, seq_len=32).flops_per_token()
    for x, scale in (("step", 1), ("tokens", 128), ("flops", 128 * per_token), ("fraction", 1 / 100)):
        xs, ys = run.curve("val_loss", x)
        np.testing.assert_allclose(xs, np.array([50, 100]) * scale)
        np.testing.assert_allclose(ys, [5.5, 4.5])
    assert run.training_seconds() == pytest.approx(50 * 0.5 + 50 * 0.25)


def test_torn_last_line_is_ignored_but_a_damaged_middle_is_an_error(tmp_path):
    run = load_run(write_run(tmp_path / "torn", [{"step": 10, "loss": 1.0}], tail='{"step": 2'))
    assert run.last_step == 10 and not run.finished
    bad = write_run(tmp_path / "bad", [{"step": 10, "loss": 1.0}], tail='garbage\n{"step": 20}\n')
    with pytest.raises(ConfigError, match="metrics.jsonl:2 is not a JSON metrics record"):
        load_run(bad)


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is .* a training run directory"):
        load_run(tmp_path)


def test_mean_curve_over_runs():
    x = np.array([1.0, 2.0, 3.0])
    grid, mean, std = mean_curve([(x, np.array([3.0, 2.0, 1.0])), (x, np.array([5.0, 4.0, 3.0]))])
    np.testing.assert_allclose(grid, x)
    np.testing.assert_allclose(mean, [4.0, 3.0, 2.0])
    np.testing.assert_allclose(std, [np.sqrt(2)] * 3)
