"""A fine-tuning config as the train step's ``Objective``: what trains, what stays frozen, the loss.

Trainable (``state.params``, the only parameters with optimizer state): ``{"adapters": ...}`` and,
when ``finetune.trainable`` unfreezes base parameters (or ``adapter='none'`` trains them all),
``{"model": those parameters}``. Frozen (``state.frozen``, read again from the base on resume, never
checkpointed): ``{"model": every other base parameter}`` and, for DPO with unfrozen base parameters,
``{"reference": their starting values}`` (the reference model is the frozen starting point; with
adapters alone it is the frozen base itself). The loss is cross-entropy on the response tokens (SFT)
or DPO's, computed against the reference in the same step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from elm_jax.common_types import Rules
from elm_jax.config import Config
from elm_jax.errors import ConfigError
from elm_jax.finetune import adapters
from elm_jax.finetune import paths as paths_lib
from elm_jax.finetune.adapters import AdapterSpec
from elm_jax.finetune.dpo import dpo_sums
from elm_jax.finetune.paths import Path, Tree
from elm_jax.model import abstract_params
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train.step import Objective, ObjectiveBuilder, forward_logits, forward_sums, graphdef

BaseLoader = Callable[[jax.sharding.Mesh, Tree], Tree]  # (mesh, shardings) -> placed base params


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which parameters train: the adapters and the unfrozen base parameters."""

    spec: AdapterSpec | None
    unfrozen: frozenset[Path]
    keep_reference: bool  # DPO with unfrozen base parameters: keep their starting values

    def is_unfrozen(self, path: Path) -> bool:
        return path in self.unfrozen


def layout(config: Config) -> Layout:
    """What ``config.finetune`` trains on ``config.model``; bad selections are ``ConfigError``s."""
    ft = config.finetune
    spec = adapters.adapter_spec(config.model, ft)
    every = [path for path, _ in nnx.to_flat_state(abstract_params(config.model))]
    if ft.adapter == "none" and not ft.trainable:
        unfrozen = every
    else:
        unfrozen = paths_lib.select(every, ft.trainable, "finetune.trainable")
    both = sorted(paths_lib.name(t.path) for t in (spec.targets if spec else ())
                  if t.path in set(unfrozen))
    if both:
        raise ConfigError(f"{', '.join(both)} would both get an adapter and train in full; remove "
                          "them from finetune.targets or from finetune.trainable")
    return Layout(spec, frozenset(unfrozen), ft.method == "dpo" and bool(unfrozen))


def _split(tree: Tree, lay: Layout) -> tuple[Tree, Tree]:
    """(unfrozen, frozen) parts of a model-shaped tree."""
    return (paths_lib.subset(tree, lay.is_unfrozen),
            paths_lib.subset(tree, lambda p: not lay.is_unfrozen(p)))


def _arrange(lay: Layout, adapter_tree: Tree, model_tree: Tree) -> tuple[Tree, Tree]:
    """(trainable, frozen) trees from a model-shaped tree and the adapters' tree."""
    unfrozen, frozen_model = _split(model_tree, lay)
    params = ({"adapters": adapter_tree} if lay.spec else {}) | ({"model": unfrozen} if unfrozen else {})
    frozen = {"model": frozen_model} | ({"reference": unfrozen} if lay.keep_reference else {})
    return params, frozen


def _abstract(config: Config, lay: Layout, model_shardings: Tree
              ) -> tuple[tuple[Tree, Tree], tuple[Tree, Tree]]:
    """((trainable, frozen) as ShapeDtypeStructs, (their shardings))."""
    model = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                         nnx.to_pure_dict(abstract_params(config.model)))
    adapter_tree = adapters.abstract(lay.spec) if lay.spec else {}
    adapter_sh = adapters.shardings(lay.spec, model_shardings) if lay.spec else {}
    return _arrange(lay, adapter_tree, model), _arrange(lay, adapter_sh, model_shardings)


def policy_params(lay: Layout, params: Tree, frozen: Tree, key: jax.Array | None = None) -> Tree:
    """The model parameters being trained, adapters folded in (``key``: this step's dropout)."""
    model = paths_lib.combine(frozen["model"], params.get("model", {}))
    return adapters.apply(lay.spec, model, params.get("adapters", {}), key)


def reference_params(frozen: Tree) -> Tree:
    """DPO's reference: the frozen starting point (the base without adapters, or the unfrozen
    parameters' starting values)."""
    return paths_lib.combine(frozen["model"], frozen.get("reference", {}))


def _no_base(mesh: jax.sharding.Mesh, shardings: Tree) -> Tree:
    raise ConfigError("this fine-tuning step was built without a base model (planning only); "
                      "run elm-finetune with finetune.base set to start one")


def finetune_objective(load_base: BaseLoader | None = None) -> ObjectiveBuilder:
    """The ``ObjectiveBuilder`` of ``config.finetune``; ``load_base`` reads the base model's
    parameters onto given shardings (None: build abstractly, e.g. for ``elm-plan``)."""

    def build(config: Config, mesh: jax.sharding.Mesh, rules: Rules) -> Objective:
        ft = config.finetune
        lay = layout(config)
        gdef = graphdef(config)
        model_sh = mesh_lib.param_shardings(abstract_params(config.model), mesh, rules)
        (params, frozen), (param_sh, frozen_sh) = _abstract(config, lay, model_sh)

        def start(base: Tree) -> tuple[Tree, Tree]:
            fresh = (adapters.init(lay.spec, base, jax.random.key(config.train.seed))
                     if lay.spec else {})
            return _arrange(lay, fresh, base)

        def sums(params: Tree, frozen: Tree, batch: Any, key: jax.Array | None):
            policy = policy_params(lay, params, frozen, key)
            if ft.method == "sft":
                return forward_sums(config, gdef, policy, batch), {}
            return dpo_sums(forward_logits(gdef, policy, batch),
                            forward_logits(gdef, reference_params(frozen), batch), batch,
                            beta=ft.dpo_beta, loss=ft.dpo_loss)

        loader = load_base or _no_base
        return Objective(params, param_sh, frozen, frozen_sh,
                         load_base=lambda: loader(mesh, model_sh), start=start, sums=sums,
                         model_params=lambda params, frozen: policy_params(lay, params, frozen))

    return build


def trainable_shapes(config: Config, model_shardings: Tree) -> Tree:
    """What ``config`` trains, as ``ShapeDtypeStruct``s placed like the model's ``model_shardings``
    (the restore target of an adapter directory)."""
    (shapes, _), (shardings, _) = _abstract(config, layout(config), model_shardings)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, shardings)


def merged(config: Config, base: Tree, trainable: Tree) -> Tree:
    """The model parameters of ``base`` with what ``config`` trained (``trainable``) folded in."""
    lay = layout(config)
    return policy_params(lay, trainable, {"model": _split(base, lay)[1]})
