"""elm-plan's machinery: AOT compile for a TPU slice, memory / FLOPs report, fit and suggestions."""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import pytest
from placeholder_step import placeholder_mesh, placeholder_step

from elm_jax.config import from_config_dict
from elm_jax.model import flops_per_token, param_count
from elm_jax.parallel import plan as plan_lib
from elm_jax.parallel import topology
from elm_jax.parallel.topology import GIB

BUILDERS = dict(build_step=placeholder_step, build_mesh=placeholder_mesh)
REPO_EXPERIMENTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "experiments"


def experiment(name):
    spec = importlib.util.spec_from_file_location(name, REPO_EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return from_config_dict(module.get_config())


def test_tiny_compiles_for_a_small_slice_and_fits():
    config = experiment("tiny")
    result = plan_lib.plan(config, topology.parse("v5e-4"), **BUILDERS)
    assert result.compiled and result.fits
    # Data parallel: every chip holds all f32 parameters and both Adam moments.
    expected_state = 3 * 4 * param_count(config.model)
    assert abs(result.state_bytes - expected_state) < 1024
    # XLA's own argument bytes agree with the shardings (state + this chip's 4 rows).
    # (TPU pads small arrays such as the [head_dim] norm weights to its tiles.)
    assert result.argument_bytes == pytest.approx(result.state_bytes + result.batch_bytes, rel=1e-3)
    assert result.alias_bytes >= result.state_bytes - 1024  # the donated state is reused
    # Compiled FLOPs per chip vs the analytic model count (XLA adds softmax, norms, the optimizer
    # and the non-causal half of attention scores; it never does less than the matmuls).
    model_per_chip = flops_per_token(config.model, 128) * 16 * 128 / 4
    assert 1.0 <= result.compiled_flops / model_per_chip < 1.5
    text = plan_lib.report(result, mfu=0.5)
    assert "verdict: FITS" in text and "temporaries" in text
    expected_seconds = model_per_chip * 4 / (4 * 197e12 * 0.5)
    assert result.step_seconds(0.5) == pytest.approx(expected_seconds)


def test_3b_on_one_v5e_chip_does_not_fit_and_says_what_would():
    config = experiment("openelm_3b")
    result = plan_lib.plan(config, topology.parse("v5e-1"), **BUILDERS)
    assert not result.fits and not result.compiled  # the state alone is over HBM: no compile
    assert result.state_bytes == pytest.approx(12 * 3_037_040_640, rel=1e-6)
    text = plan_lib.report(result, mfu=0.4)
    assert "DOES NOT FIT" in text
    # 36 GB of state: fully sharded it needs 8 v5e chips to keep half of each HBM free.
    bigger = [s for s in result.suggestions if s.topology]
    assert bigger and bigger[0].topology == "v5e-8"
    assert "--topology v5e-8 --config.mesh.data=1 --config.mesh.fsdp=-1" in text


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
    kwargs = dict(build_step=oversized, build_mesh=placeholder_mesh)
    result = plan_lib.plan(config, topology.parse("v5e-1"), **kwargs)
    assert not result.fits and not result.compiled
    assert "exceeds available HBM" in result.compiler_error
    overrides = [dict(s.overrides) for s in result.suggestions]
    assert overrides == [{"model.remat_policy": "full"}, {"train.microbatches": 2},
                         {"train.batch_size": 8}]
    assert "XLA: Ran out of memory" in plan_lib.report(result, mfu=0.4)
    # Verification compiles each suggestion until one fits: only the smaller batch shrinks
    # this step's temporaries (48 GB -> 12 GB).
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
    best, best_plan, tried = plan_lib.largest_batch(config, topology.parse("v5e-4"),
                                                    build_mesh=placeholder_mesh)
    assert best == limit and best_plan.per_chip_batch == limit
    assert len(tried) <= 6 + 6  # doubling to 64, then bisection
    config2 = dataclasses.replace(config, train=dataclasses.replace(config.train, microbatches=4))
    best, _, _ = plan_lib.largest_batch(config2, topology.parse("v5e-4"), build_mesh=placeholder_mesh)
    assert best == 36  # multiples of the microbatch count only
