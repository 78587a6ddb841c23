"""elm-plan: the real train step compiled for a TPU slice on this CPU; memory, FLOPs, fit, advice."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from elm_jax.config import from_config_dict
from elm_jax.model import flops_per_token, param_count
from elm_jax.train import plan as plan_lib
from elm_jax.train import topology
from elm_jax.train.topology import GIB

REPO = Path(__file__).resolve().parents[2]
REPO_EXPERIMENTS = REPO / "experiments"


def experiment(name):
    spec = importlib.util.spec_from_file_location(name, REPO_EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return from_config_dict(module.get_config())


def test_tiny_compiles_for_a_small_slice_and_fits():
    config = experiment("tiny")
    result = plan_lib.plan(config, topology.parse("v5e-4"))
    assert result.compiled and result.fits
    assert result.mesh_shape == {"data": 4, "fsdp": 1, "tensor": 1}
    # Data parallel: every chip holds all f32 parameters and both Adam moments (+ a few counters).
    expected_state = 3 * 4 * param_count(config.model)
    assert 0 <= result.state_bytes - expected_state < 1024
    # XLA's own argument bytes agree with the shardings (state + this chip's 4 rows).
    # (TPU pads small arrays such as the [head_dim] norm weights to its tiles.)
    assert result.argument_bytes == pytest.approx(result.state_bytes + result.batch_bytes, rel=1e-3)
    assert result.alias_bytes >= result.state_bytes - 1024  # the donated state is reused
    # Compiled FLOPs per chip vs the analytic model count: XLA adds norms, softmax and the
    # optimizer, but counts nothing inside the Pallas attention kernel (a few % of tiny's FLOPs).
    model_per_chip = flops_per_token(config.model, 128) * 16 * 128 / 4
    assert 0.8 <= result.compiled_flops / model_per_chip < 1.5
    text = plan_lib.report(result, mfu=0.5)
    assert "verdict: FITS" in text and "temporaries" in text and "attention: pallas_tpu" in text
    assert "(4 sequences per chip: 1 microbatch(es) of 4 sequences per chip)" in text
    # The memory account: the floor's terms, XLA's temporaries against it, the peak's buffers.
    assert result.bound.held_bytes == pytest.approx(result.state_bytes + result.batch_bytes, abs=64)
    assert "memory floor per chip" in text and "XLA temporaries / floor temporaries" in text
    assert result.temp_ratio == result.temp_bytes / result.bound.temp_bytes
    # the same account without the compile (what elm-plan's search steers by)
    estimate = plan_lib.estimate(config, topology.parse("v5e-4"))
    assert not estimate.compiled and estimate.bound == result.bound
    assert estimate.state_bytes == result.state_bytes
    assert result.buffers.temporaries
    # the donated state's buffers also hold the new state: only the parameters count once
    assert result.buffers.argument_bytes == pytest.approx(result.argument_bytes, rel=1e-3)
    assert "largest temporaries alive at XLA's peak" in text
    assert result.host_peak_bytes > 2 ** 28 and "peak host memory" in text
    # XLA counts a loop body once: with 4 microbatches the report scales the loop's FLOPs by 4.
    looped = plan_lib.report(dataclasses.replace(result, microbatches=4), mfu=0.5)
    assert (f"compiled FLOPs per chip: {4 * result.compiled_flops:.4g} = XLA's "
            f"{result.compiled_flops:.4g} for one microbatch x 4") in looped
    expected_seconds = model_per_chip * 4 / (4 * 197e12 * 0.5)
    assert result.step_seconds(0.5) == pytest.approx(expected_seconds)


def plan_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "elm_jax.cli.plan", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def test_3b_on_one_v5e_chip_does_not_fit_and_says_what_would():
    result = plan_cli("--config", "experiments/openelm_3b.py", "--topology", "v5e-1")
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout
    assert "verdict: DOES NOT FIT" in out
    # microbatches "auto" in the preset: the 2048 sequences in 128 microbatches of 16
    assert "128 microbatch(es) of 16 sequences per chip, chosen by train.microbatches=auto" in out
    assert "no microbatch count or remat policy fits" in out  # the search needs no compile here
    assert "not compiled: the state alone exceeds" in out  # 36 GB of state on a 16 GB chip
    # f32 parameters + two Adam moments of 3,037,040,640 parameters, all on the one chip:
    assert f"parameters + optimizer state {12 * 3_037_040_640 / GIB:8.2f} GiB" in out
    # Fully sharded it needs 8 v5e chips to keep half of each HBM free for activations.
    assert "--topology v5e-8 --config.mesh.data=1 --config.mesh.fsdp=-1" in out
    # The batch search (spelled as in the issue) starts at one sequence per chip and stops there.
    search = plan_cli("--config", "experiments/openelm_3b.py", "--topology", "v5e-1",
                      "--batch-search", "--config.train.microbatches=1")
    assert search.returncode == 1, search.stderr[-2000:]
    assert search.stdout.startswith("per-chip batch 1: does not fit")
    assert "not even the smallest batch fits" in search.stdout


def test_cli_user_errors_are_one_line():
    result = plan_cli("--config", "experiments/tiny.py", "--topology", "v5p-12")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: 'v5p-12': the size counts")


@dataclasses.dataclass
class OversizedStep:
    """A step whose temporaries grow with the batch: [rows, rows] scores and their transpose."""

    rows: int
    mesh: object

    def __post_init__(self):
        sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.state_shapes = {"x": jax.ShapeDtypeStruct((self.rows, 128), jnp.float32, sharding=sharding)}
        self.batch_shapes = {}
        def step(state):
            scores = state["x"] @ state["x"].T
            return scores.T[:, :8] + scores[:, :8]

        self.fn = jax.jit(step, in_shardings=(sharding,), out_shardings=sharding)

    def lower(self):
        return self.fn.lower(self.state_shapes)


def oversized(config, mesh):
    return OversizedStep(5000 * config.train.batch_size, mesh)  # batch 16: 48 GB of temporaries


def test_temporaries_over_hbm_are_reported_from_the_compiler_with_suggestions():
    config = experiment("tiny")  # batch 16, no remat, one microbatch
    kwargs = dict(build_step=oversized)
    result = plan_lib.plan(config, topology.parse("v5e-1"), **kwargs)
    assert not result.fits and not result.compiled
    assert "exceeds available HBM" in result.compiler_error
    # XLA's own figure, read from its refusal: the [80000, 80000] f32 scores and their transpose.
    assert result.temp_bytes == pytest.approx(2 * 4 * 80_000 ** 2, rel=0.01)
    overrides = [dict(s.overrides) for s in result.suggestions]
    # 47.7 GiB of temporaries next to a 15.2 GiB budget: activations must shrink 4x.
    assert overrides == [{"model.remat_policy": "full"}, {"train.microbatches": 4},
                         {"train.batch_size": 4}]
    assert "XLA: Ran out of memory" in plan_lib.report(result, mfu=0.4)
    # Verification compiles each suggestion until one fits: only the smaller batch shrinks
    # this step's temporaries (48 GB -> 3 GB).
    checked = plan_lib.verify_suggestions(result, **kwargs).suggestions
    assert [c.verified.split(" ")[0] for c in checked] == ["still", "still", "fits:"]


def test_batch_search_bisects_to_the_largest_fitting_batch(monkeypatch):
    """The search logic against a stand-in planner whose limit we know (compiles are slow)."""
    limit = 37
    seen = []

    def fake_plan(config, topo, **kwargs):
        seen.append(config.train.batch_size)
        fits = config.train.batch_size <= limit * 4  # 4 batch shards on v5e-4
        return dataclasses.replace(
            plan_lib.Plan(config=config, topology=topo, mesh_shape={"data": 4, "fsdp": 1,
                                                                   "tensor": 1},
                          hbm_bytes=GIB, hbm_fraction=1.0, state_bytes=0,
                          batch_bytes=0 if fits else 2 * GIB))

    monkeypatch.setattr(plan_lib, "plan", fake_plan)
    config = experiment("tiny")
    best, best_plan, tried = plan_lib.largest_batch(config, topology.parse("v5e-4"))
    assert best == limit and best_plan.per_chip_batch == limit
    assert len(tried) <= 6 + 6  # doubling to 64, then bisection
    config2 = dataclasses.replace(config, train=dataclasses.replace(config.train, microbatches=4))
    best, _, _ = plan_lib.largest_batch(config2, topology.parse("v5e-4"))
    assert best == 36  # multiples of the microbatch count only

