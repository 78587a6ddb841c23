"""experiments/finetune/: one config per size and method, with the paper's numbers (docs/OPENELM.md
section 4, CoreNet's peft_configs and README-instruct), checked against a table written out here."""

import importlib.util
import math
from pathlib import Path

import pytest

from elm_jax.config import from_config_dict
from elm_jax.train.optimizer import learning_rate_schedule

ROOT = Path(__file__).resolve().parents[2] / "experiments" / "finetune"
SIZES = ("270m", "450m", "1_1b", "3b")
# size -> (epochs, peak learning rate, loss) of the instruct models' DPO
DPO = {"270m": (5, 2e-5, "hinge"), "450m": (8, 3e-5, "hinge"), "1_1b": (5, 5e-5, "sigmoid"),
       "3b": (10, 1e-4, "hinge")}
ULTRAFEEDBACK_PAIRS, DPO_BATCH = 61_135, 128


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return from_config_dict(module.get_config())  # validated


def test_one_file_per_size_and_method():
    names = {p.stem for p in ROOT.glob("*.py")}
    assert {f"{m}_{s}" for m in ("lora", "dora", "dpo") for s in SIZES} | {"shakespeare_lora"} == names


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_peft_recipe(adapter, size):
    config = load(f"{adapter}_{size}")
    ft, train = config.finetune, config.train
    assert (ft.method, ft.adapter, ft.format) == ("sft", adapter, "alpaca")
    assert (ft.rank, ft.alpha, ft.dropout, ft.rslora) == (32, 32.0, 0.1, False)
    assert ft.base == {"270m": "OpenELM-270M", "450m": "OpenELM-450M", "1_1b": "OpenELM-1.1B",
                       "3b": "OpenELM-3B"}[size]  # set, so elm-plan plans the fine-tuning state
    assert set(ft.targets) == {"token_embeddings", "qkv_proj", "out_proj", "proj_1", "proj_2"}
    assert ft.trainable == ()  # base weights and norms frozen
    assert (train.b1, train.b2, train.eps, train.weight_decay, train.grad_clip) == (0.9, 0.95, 1e-8, 0.0, 1.0)
    assert train.z_loss > 0 and config.model.dtype == "bfloat16"
    assert train.steps == 4375
    lr = learning_rate_schedule(train)
    assert float(lr(0)) == pytest.approx(1e-6, rel=1e-4)
    assert float(lr(1000)) == pytest.approx(3e-4, rel=1e-4)
    assert float(lr(4375)) == pytest.approx(3e-5, rel=1e-4)


@pytest.mark.parametrize("size", SIZES)
def test_dpo_recipe(size):
    epochs, peak, loss = DPO[size]
    config = load(f"dpo_{size}")
    ft, train = config.finetune, config.train
    assert (ft.method, ft.format, ft.dpo_loss, ft.dpo_beta) == ("dpo", "preference", loss, 0.01)
    assert ft.adapter == "none" and ft.trainable == ()  # every parameter trains
    assert train.batch_size == DPO_BATCH
    assert train.steps == math.ceil(epochs * ULTRAFEEDBACK_PAIRS / DPO_BATCH)
    assert float(learning_rate_schedule(train)(train.warmup_steps)) == pytest.approx(peak, rel=1e-4)
    assert train.warmup_steps == math.ceil(0.1 * train.steps)
