"""HuggingFace ``apple/OpenELM-*`` checkpoints <-> our config and parameters.

The HF layout stores PyTorch ``[out, in]`` matrices and fuses Q, K and V into ``qkv_proj`` and the
SwiGLU gate and up projections into ``proj_1``; we keep them apart (to shard by heads) and transpose.
Every conversion is a pure transpose / split / concatenate, so a round trip is bit-exact, and
parameters keep the checkpoint's dtype (bf16 stays bf16).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save as safetensors_bytes

from elm_jax.common_types import CONFIG_FILE
from elm_jax.config import ModelConfig
from elm_jax.errors import CheckpointError, ConfigError, UsageError
from elm_jax.model import OpenELM, abstract_model
from elm_jax.scaling import per_layer_multipliers
from elm_jax.storage import as_path, is_uri

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_REQUIRED_FLAGS = {
    "ffn_with_glu": True,
    "normalize_qk_projections": True,
    "share_input_output_layers": True,
}


def config_from_hf(hf: Mapping[str, Any], *, dtype: str = "float32",
                   param_dtype: str = "float32") -> ModelConfig:
    """Our ``ModelConfig`` from an OpenELM ``config.json`` (per-layer lists kept explicit)."""
    for key, want in _REQUIRED_FLAGS.items():
        if hf.get(key, want) != want:
            raise ConfigError(f"config.json: {key}={hf[key]!r} is not supported (need {want})")
    if hf.get("activation_fn_name", "swish") not in ("swish", "silu"):
        raise ConfigError(f"config.json: activation {hf['activation_fn_name']!r} is not supported")
    if hf.get("normalization_layer_name", "rms_norm") != "rms_norm":
        raise ConfigError("config.json: only normalization_layer_name='rms_norm' is supported")
    try:
        cfg = ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            model_dim=int(hf["model_dim"]),
            num_layers=int(hf["num_transformer_layers"]),
            head_dim=int(hf["head_dim"]),
            num_gqa_groups=int(hf["num_gqa_groups"]),
            qkv_multipliers=tuple(float(m) for m in np.atleast_1d(hf["qkv_multipliers"])),
            ffn_multipliers=tuple(float(m) for m in np.atleast_1d(hf["ffn_multipliers"])),
            ffn_dim_divisor=int(hf.get("ffn_dim_divisor", 256)),
            num_query_heads=tuple(int(h) for h in hf["num_query_heads"]),
            num_kv_heads=tuple(int(h) for h in hf["num_kv_heads"]),
            rope_theta=float(hf.get("rope_freq_constant", 10000)),
            rope_max_length=int(hf.get("rope_max_length", 4096)),
            max_context_length=int(hf.get("max_context_length", 2048)),
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl="auto",
        )
    except KeyError as err:
        raise ConfigError(f"config.json is missing the field {err.args[0]!r}") from None
    cfg.validate()
    return cfg


def hf_config(cfg: ModelConfig, *, bos_token_id: int = 1, eos_token_id: int = 2) -> dict[str, Any]:
    """The ``config.json`` of an OpenELM checkpoint with our model's shapes."""
    shapes = cfg.layer_shapes()
    return {
        "architectures": ["OpenELMForCausalLM"],
        "model_type": "openelm",
        "activation_fn_name": "swish",
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "ffn_dim_divisor": cfg.ffn_dim_divisor,
        "ffn_multipliers": per_layer_multipliers(cfg.ffn_multipliers, cfg.num_layers),
        "ffn_with_glu": True,
        "head_dim": cfg.head_dim,
        "max_context_length": cfg.max_context_length,
        "model_dim": cfg.model_dim,
        "normalization_layer_name": "rms_norm",
        "normalize_qk_projections": True,
        "num_gqa_groups": cfg.num_gqa_groups,
        "num_kv_heads": [s.kv_heads for s in shapes],
        "num_query_heads": [s.q_heads for s in shapes],
        "num_transformer_layers": cfg.num_layers,
        "qkv_multipliers": list(cfg.qkv_multipliers),
        "rope_freq_constant": int(cfg.rope_theta),
        "rope_max_length": cfg.rope_max_length,
        "share_input_output_layers": True,
        "vocab_size": cfg.vocab_size,
        "torch_dtype": cfg.param_dtype,
        "transformers_version": "4.39.3",
    }


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name with the shape the config implies."""
    d, h = cfg.model_dim, cfg.head_dim
    shapes = {"transformer.token_embeddings.weight": (cfg.vocab_size, d),
              "transformer.norm.weight": (d,)}
    for i, s in enumerate(cfg.layer_shapes()):
        p = f"transformer.layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "attn.qkv_proj.weight": ((s.q_heads + 2 * s.kv_heads) * h, d),
            p + "attn.q_norm.weight": (h,),
            p + "attn.k_norm.weight": (h,),
            p + "attn.out_proj.weight": (d, s.q_heads * h),
            p + "ffn_norm.weight": (d,),
            p + "ffn.proj_1.weight": (2 * s.ffn_dim, d),
            p + "ffn.proj_2.weight": (d, s.ffn_dim),
        }
    return shapes


def _check(cfg: ModelConfig, tensors: Mapping[str, np.ndarray]) -> None:
    expected = expected_shapes(cfg)
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"checkpoint is missing tensor {name} (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"tensor {name}: expected shape {shape} from config.json, found "
                f"{tuple(tensors[name].shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"checkpoint has tensors that config.json does not describe: "
                              f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def check_values(tensors: Mapping[str, np.ndarray]) -> None:
    """Every tensor is floating point and finite: integer weights are a quantized or foreign
    checkpoint, NaN / Inf a damaged one; either would load silently and generate garbage."""
    for name in sorted(tensors):
        tensor = tensors[name]
        if not jnp.issubdtype(tensor.dtype, jnp.floating):
            raise CheckpointError(
                f"tensor {name} holds {tensor.dtype} values; OpenELM weights are floating point "
                "(float32, bfloat16, float16): is this a quantized or another model's checkpoint?")
        finite = np.isfinite(tensor)
        if not finite.all():
            raise CheckpointError(
                f"tensor {name} holds {finite.size - int(np.count_nonzero(finite))} NaN/Inf "
                "value(s); the checkpoint is damaged: download or export it again")


def params_from_hf(cfg: ModelConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Our nested parameter dict (as ``nnx.state`` paths) from HF tensors."""
    _check(cfg, tensors)
    d, h = cfg.model_dim, cfg.head_dim
    layers = {}
    for i, s in enumerate(cfg.layer_shapes()):
        get = lambda name, i=i: np.asarray(tensors[f"transformer.layers.{i}.{name}"])  # noqa: B023
        qkv = get("attn.qkv_proj.weight").T  # [d, (q + 2k) * h]
        q_end, k_end = s.q_heads * h, (s.q_heads + s.kv_heads) * h
        proj_1 = get("ffn.proj_1.weight").T  # [d, 2f]
        layers[i] = {
            "attn_norm": {"weight": get("attn_norm.weight")},
            "attn": {
                "q_proj": qkv[:, :q_end].reshape(d, s.q_heads, h),
                "k_proj": qkv[:, q_end:k_end].reshape(d, s.kv_heads, h),
                "v_proj": qkv[:, k_end:].reshape(d, s.kv_heads, h),
                "q_norm": {"weight": get("attn.q_norm.weight")},
                "k_norm": {"weight": get("attn.k_norm.weight")},
                "out_proj": get("attn.out_proj.weight").T.reshape(s.q_heads, h, d),
            },
            "ffn_norm": {"weight": get("ffn_norm.weight")},
            "ffn": {"gate": proj_1[:, :s.ffn_dim], "up": proj_1[:, s.ffn_dim:],
                    "down": get("ffn.proj_2.weight").T},
        }
    return {"embed": np.asarray(tensors["transformer.token_embeddings.weight"]),
            "layers": layers,
            "norm": {"weight": np.asarray(tensors["transformer.norm.weight"])}}


def params_to_hf(model: OpenELM) -> dict[str, np.ndarray]:
    """HF tensors (``[out, in]``, fused qkv and proj_1) from our model."""
    cfg = model.cfg
    get = lambda var: np.asarray(jax.device_get(var[...]))  # noqa: E731
    tensors = {"transformer.token_embeddings.weight": get(model.embed),
               "transformer.norm.weight": get(model.norm.weight)}
    for i, layer in enumerate(model.layers):
        p = f"transformer.layers.{i}."
        attn = layer.attn
        qkv = np.concatenate(
            [get(w).reshape(cfg.model_dim, -1) for w in (attn.q_proj, attn.k_proj, attn.v_proj)],
            axis=1)
        tensors |= {
            p + "attn_norm.weight": get(layer.attn_norm.weight),
            p + "attn.qkv_proj.weight": qkv.T,
            p + "attn.q_norm.weight": get(attn.q_norm.weight),
            p + "attn.k_norm.weight": get(attn.k_norm.weight),
            p + "attn.out_proj.weight": get(attn.out_proj).reshape(-1, cfg.model_dim).T,
            p + "ffn_norm.weight": get(layer.ffn_norm.weight),
            p + "ffn.proj_1.weight": np.concatenate([get(layer.ffn.gate), get(layer.ffn.up)],
                                                    axis=1).T,
            p + "ffn.proj_2.weight": get(layer.ffn.down).T,
        }
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def model_from_params(cfg: ModelConfig, params: Mapping[str, Any]) -> OpenELM:
    """An ``OpenELM`` whose parameters are ``params`` (shape-checked against the config)."""
    graphdef, state = nnx.split(abstract_model(cfg))
    flat = dict(nnx.to_flat_state(state))

    def lookup(path: tuple) -> Any:
        node: Any = params
        for key in path:
            node = node[key]
        return node

    for path, var in flat.items():
        value = lookup(path)
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointError(f"parameter {'/'.join(map(str, path))}: expected shape "
                                  f"{tuple(var.shape)}, found {tuple(value.shape)}")
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if (path / INDEX_FILE).exists():
        index = json.loads((path / INDEX_FILE).read_text())
        files = sorted(set(index.get("weight_map", {}).values()))
        if not files:
            raise CheckpointError(f"{path / INDEX_FILE} has an empty weight_map")
    elif (path / SINGLE_FILE).exists():
        files = [SINGLE_FILE]
    else:
        raise CheckpointError(
            f"{path} holds neither {SINGLE_FILE} nor {INDEX_FILE}; point to an OpenELM "
            "checkpoint directory (e.g. a download of apple/OpenELM-270M)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        try:
            with safe_open(str(path / name), framework="flax") as f:
                for key in f.keys():
                    tensors[key] = np.asarray(f.get_tensor(key))
        except FileNotFoundError:
            raise CheckpointError(f"{path / name} (listed in {INDEX_FILE}) is missing") from None
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read {path / name}: {err}") from err
    return tensors


def load_hf(path: str | os.PathLike, *, dtype: str = "float32",
            param_dtype: str | None = None) -> tuple[ModelConfig, OpenELM]:
    """Read an OpenELM HF directory: ``(config, model)``; ``model(ids)`` gives f32 logits.

    Parameters keep the checkpoint's dtype unless ``param_dtype`` says otherwise; ``dtype`` is
    the compute dtype.
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise CheckpointError(f"{config_file} not found; an OpenELM checkpoint directory "
                                "holds config.json and model.safetensors")
    tensors = _read_tensors(path)
    check_values(tensors)
    stored = str(tensors["transformer.norm.weight"].dtype) if tensors else "float32"
    cfg = config_from_hf(json.loads(config_file.read_text()), dtype=dtype,
                         param_dtype=param_dtype or stored)
    return cfg, model_from_params(cfg, params_from_hf(cfg, tensors))


def check_new_output(path: str | os.PathLike) -> None:
    """Refuse an output that would replace something (checked again by ``save_hf``; callers check
    first so that nothing is loaded or computed in vain)."""
    path = as_path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise UsageError(f"{path} exists and is not empty; choose a new output directory "
                         "(nothing was written)")


def save_hf(config: ModelConfig, model: OpenELM, path: str | os.PathLike, *,
            max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> epath.Path:
    """Write ``config.json`` + safetensors (sharded with an index past ``max_shard_bytes``).

    Written to a temporary directory and renamed into place, so an interrupted export never
    leaves a half-written checkpoint; an existing non-empty directory is refused unless
    ``overwrite``. ``path`` may be an object-store URI (``gs://...``); files get the usual modes
    (0755 / 0644 under the umask).
    """
    path = as_path(path)
    if not overwrite:
        check_new_output(path)
    tensors = params_to_hf(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config(config), indent=2))
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for name in sorted(tensors):
            nbytes = tensors[name].nbytes
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = tensors[name]
            size += nbytes
        meta = {"format": "pt"}
        write = lambda shard, fname: (tmp / fname).write_bytes(  # noqa: E731
            safetensors_bytes({k: jnp.asarray(v) for k, v in shard.items()}, meta))
        if len(shards) == 1:
            write(shards[0], SINGLE_FILE)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                write(shard, fname)
                weight_map |= {name: fname for name in shard}
            total = sum(t.nbytes for t in tensors.values())
            (tmp / INDEX_FILE).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        if path.exists():
            path.rmtree()
        _publish(tmp, path)
    finally:
        if tmp.exists():
            tmp.rmtree()
    return path


def _publish(tmp: epath.Path, path: epath.Path) -> None:
    """Rename ``tmp`` to ``path``. Object stores cannot rename a folder: there each file is copied
    and ``config.json`` last, so a folder without it is an unfinished export."""
    if not is_uri(path):
        tmp.rename(path)
        return
    for file in sorted(tmp.iterdir(), key=lambda f: f.name == CONFIG_FILE):
        file.copy(path / file.name)
