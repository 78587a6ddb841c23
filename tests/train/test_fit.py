"""elm-plan --fit: the search for microbatches and remat policy, against a stand-in planner whose
limits we set (real compiles take minutes; tests/parallel/test_plan.py compiles for real)."""

import dataclasses

import pytest

from elm_jax.config import default_config, from_config_dict
from elm_jax.train import fit as fit_lib
from elm_jax.train import memory as memory_lib
from elm_jax.train import plan as plan_lib
from elm_jax.train import topology
from elm_jax.train.topology import GIB


def fake_planner(monkeypatch, fits):
    """Replace the compile with ``fits(rows per chip per microbatch, remat policy)``; the stand-in
    has no analytic floor, so the search is not steered."""
    seen = []

    def fake_plan(config, topo, record=True, **kwargs):
        shards = 4
        micro = config.train.microbatch_count(shards)
        rows = config.train.batch_size // shards // micro
        if record:
            seen.append((micro, config.model.remat_policy))
        ok = fits(rows, config.model.remat_policy)
        return plan_lib.Plan(config=config, topology=topo,
                             mesh_shape={"data": 4, "fsdp": 1, "tensor": 1}, hbm_bytes=GIB,
                             hbm_fraction=1.0, state_bytes=0, batch_bytes=0, microbatches=micro,
                             argument_bytes=0, output_bytes=0, alias_bytes=0, code_bytes=0,
                             temp_bytes=GIB // 2 if ok else 2 * GIB)

    monkeypatch.setattr(plan_lib, "plan", fake_plan)
    monkeypatch.setattr(plan_lib, "estimate", lambda config, topo, **kwargs: dataclasses.replace(
        fake_plan(config, topo, record=False), argument_bytes=None, temp_bytes=None))
    return seen


MIB = 2 ** 20


def floored_planner(monkeypatch, floor_per_row: int, xla_over_floor: float = 2.0):
    """A stand-in whose analytic floor is ``floor_per_row`` bytes per sequence and whose "XLA"
    needs ``xla_over_floor`` times that, against 1 GiB of HBM; records the counts it compiles."""
    compiled = []

    def account(config):
        micro = config.train.microbatch_count(4)
        rows = config.train.batch_size // 4 // micro
        bound = memory_lib.MemoryBound(held=(), temporaries=(
            memory_lib.Term("activations", rows * floor_per_row, "per row"),))
        return plan_lib.Plan(config=config, topology=topology.parse("v5e-4"),
                             mesh_shape={"data": 4, "fsdp": 1, "tensor": 1}, hbm_bytes=GIB,
                             hbm_fraction=1.0, state_bytes=0, batch_bytes=0, microbatches=micro,
                             bound=bound)

    def fake_plan(config, topo, **kwargs):
        result = account(config)
        compiled.append(result.microbatches)
        return dataclasses.replace(result, argument_bytes=0, output_bytes=0, alias_bytes=0,
                                   code_bytes=0,
                                   temp_bytes=int(xla_over_floor * result.bound.temp_bytes))

    monkeypatch.setattr(plan_lib, "plan", fake_plan)
    monkeypatch.setattr(plan_lib, "estimate", lambda config, topo, **kwargs: account(config))
    return compiled


def config(policy="none", batch=256):
    cd = default_config()
    cd.train.batch_size = batch  # 64 sequences per chip on 4 chips
    cd.train.microbatches = "auto"  # 16 per chip: 4 microbatches
    cd.model.remat_policy = policy
    return from_config_dict(cd)


def test_fewest_microbatches_under_the_configured_remat(monkeypatch):
    seen = fake_planner(monkeypatch, lambda rows, policy: rows <= 5)
    first = plan_lib.plan(config(), topology.parse("v5e-4"))
    result = fit_lib.fit(first)
    # 64 per chip: counts 4, 8, 16, 32, 64 divide it; 16 microbatches of 4 is the first under 5.
    assert result.plan.fits and result.overrides == (("train.microbatches", 16),)
    assert result.flags() == "--config.train.microbatches=16"
    assert len(seen) <= 1 + 3  # the first plan, then the largest count and a bisection step or two
    assert all(policy == "none" for _, policy in seen)
    assert "fits with: --config.train.microbatches=16" in fit_lib.fit_report(result)


def test_full_remat_when_no_microbatch_count_is_enough(monkeypatch):
    seen = fake_planner(monkeypatch, lambda rows, policy: policy == "full" and rows <= 8)
    first = plan_lib.plan(config(), topology.parse("v5e-4"))
    result = fit_lib.fit(first)
    assert result.overrides == (("train.microbatches", 8), ("model.remat_policy", "full"))
    assert (64, "none") in seen  # every count tried under the configured policy first


def test_nothing_fits(monkeypatch):
    fake_planner(monkeypatch, lambda rows, policy: False)
    result = fit_lib.fit(plan_lib.plan(config(), topology.parse("v5e-4")))
    assert result.plan is None and "no microbatch count" in fit_lib.fit_report(result)


@pytest.mark.parametrize("per_chip,start,expected", [(64, 4, [4, 8, 16, 32, 64]),
                                                     (24, 1, [1, 2, 3, 4, 6, 8, 12, 24]),
                                                     (13, 2, [13])])
def test_microbatch_counts(per_chip, start, expected):
    assert fit_lib.microbatch_counts(per_chip, start) == expected


def test_a_config_that_fits_is_left_alone(monkeypatch):
    seen = fake_planner(monkeypatch, lambda rows, policy: True)
    first = plan_lib.plan(config(), topology.parse("v5e-4"))
    result = fit_lib.fit(dataclasses.replace(first))
    assert result.overrides == (("train.microbatches", 4),) and len(seen) == 1


def test_the_floor_steers_the_search_to_the_predicted_count(monkeypatch):
    # 64 per chip, counts 4 8 16 32 64 = 16 8 4 2 1 rows; XLA needs 2x the floor of 100 MiB a row:
    # 4 rows (800 MiB) is the first to fit in 1 GiB. The first compile (16 rows) gives the ratio 2,
    # so the search compiles 16 microbatches first, then 8 to show it does not fit, and no other.
    compiled = floored_planner(monkeypatch, 100 * MIB)
    first = plan_lib.plan(config(), topology.parse("v5e-4"))
    assert not first.fits and first.temp_ratio == pytest.approx(2.0)
    result = fit_lib.fit(first)
    assert result.overrides == (("train.microbatches", 16),)
    assert compiled == [4, 16, 8]


def test_a_prediction_too_cautious_walks_down(monkeypatch):
    # XLA's refusal of the first compile names 4x the floor, but smaller microbatches need only 2x:
    # the prediction (32 microbatches of 2 rows) fits, and so do 16 of 4 rows; 8 of 8 rows
    # (1600 MiB) does not. The walk goes down until a fit sits above a miss.
    compiled = floored_planner(monkeypatch, 100 * MIB)
    first = plan_lib.plan(config(), topology.parse("v5e-4"))
    first = dataclasses.replace(first, argument_bytes=None, temp_bytes=4 * first.bound.temp_bytes,
                                compiler_error="RESOURCE_EXHAUSTED")
    result = fit_lib.fit(first)
    assert result.overrides == (("train.microbatches", 16),)
    assert compiled == [4, 32, 16, 8]


def test_a_prediction_too_hopeful_walks_up(monkeypatch):
    # The first compile is refused with no temporaries named, so the ratio is unknown and taken as
    # 1: the floor predicts 8 microbatches (8 rows, 800 MiB); XLA needs 3x, so the walk goes up to
    # 32 (2 rows, 600 MiB). Fitting is monotone: the answer is the smallest count that fits.
    compiled = floored_planner(monkeypatch, 100 * MIB, xla_over_floor=3.0)
    first = dataclasses.replace(plan_lib.plan(config(), topology.parse("v5e-4")), temp_bytes=None,
                                argument_bytes=None, compiler_error="RESOURCE_EXHAUSTED")
    result = fit_lib.fit(first)
    assert result.overrides == (("train.microbatches", 32),)
    assert compiled == [4, 8, 16, 32]
