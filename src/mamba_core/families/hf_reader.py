"""Reading a transformers ``config.json`` dict into a family config: typed keys, defaults, no silent drops.

Each family's ``from_hf`` reads the keys it needs through a ``HFReader``, declares the keys that do not
change the model's math (``ignore``), and calls ``finish()``: any key neither read nor ignored raises
``ConfigError`` naming it, so a new upstream option cannot slip through unnoticed. Defaults are
transformers' own defaults for that family, so a minimal config.json reads as transformers reads it.
``backbone`` reads the keys every family shares and ``fields`` the keys named as the family's fields;
``backbone_json`` writes the shared keys back.
"""

from __future__ import annotations

import math
from typing import Any

from mamba_core.errors import ConfigError
from mamba_core.family_schema import MAX_LAYERS

# keys that size a Python sequence while the json is read (a layer list), bounded before that happens
BOUNDED_KEYS = {"num_hidden_layers": MAX_LAYERS}

# Keys every transformers config may carry that do not change the forward math.
COMMON_IGNORED = frozenset(
    {
        "_name_or_path",
        "architectures",
        "auto_map",
        "bos_token_id",
        "chunk_size_feed_forward",
        "dtype",
        "eos_token_id",
        "id2label",
        "initializer_range",
        "is_encoder_decoder",
        "label2id",
        "model_type",
        "output_attentions",
        "output_hidden_states",
        "output_router_logits",
        "pad_token_id",
        "problem_type",
        "return_dict",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "num_logits_to_keep",
        "router_aux_loss_coef",
        "attention_dropout",
        "hidden_dropout",
        "max_position_embeddings",
        "use_mamba_kernels",
        "tokenizer_class",
        "rescale_prenorm_residual",
        "time_step_min",
        "time_step_max",
        "time_step_floor",
        "time_step_init_scheme",
        "time_step_scale",
        "use_mambapy",
        "use_associative_scan",
        "z_loss_coefficient",
        "quantization_config",
        "quantization",  # mlx-lm's block, read by mamba_core.quantization (loading.plan_checkpoint)
    }
)


def backbone_json(cfg, eps_key: str = "rms_norm_eps") -> dict[str, Any]:
    """The config.json keys of the fields every family has (what ``HFReader.backbone`` reads back):
    ``hidden_size``, ``vocab_size``, ``num_hidden_layers``, ``tie_word_embeddings``, ``eps_key``,
    ``num_attention_heads``, ``num_key_value_heads``.

    Example:
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(d_model=8, vocab_size=10, n_layer=2, tie_embeddings=False,
        ...                       norm_epsilon=1e-5, num_attention_heads=2, num_key_value_heads=1)
        >>> backbone_json(cfg)["hidden_size"]
        8
    """
    return {
        "hidden_size": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.n_layer,
        "tie_word_embeddings": cfg.tie_embeddings,
        eps_key: cfg.norm_epsilon,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
    }


def json_number(value: Any) -> Any:
    """transformers writes inf/nan as ``{"__float__": "Infinity"}``; return the float, else ``value``.

    Example:
        >>> json_number({"__float__": "Infinity"}), json_number(2)
        (inf, 2)
    """
    if isinstance(value, dict) and set(value) == {"__float__"} and isinstance(value["__float__"], str):
        return float(value["__float__"])
    return value


class HFReader:
    """Typed access to a config.json dict, recording which keys were used.

    Example:
        >>> r = HFReader({"hidden_size": 64, "architectures": ["X"]}, "demo")
        >>> r.int("hidden_size"), r.float("rms_norm_eps", 1e-5)
        (64, 1e-05)
        >>> r.finish()
    """

    def __init__(self, d: dict[str, Any], family: str):
        if not isinstance(d, dict):
            raise ConfigError(f"a {family} config must be a dict, got {type(d).__name__}")
        self.d = dict(d)
        self.family = family
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        """Whether the key is present (and not None)."""
        return self.d.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as stored, or ``default`` when absent or None."""
        self.used.add(key)
        value = json_number(self.d.get(key))
        return default if value is None else value

    def _fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(
            f"{self.family} config key {key!r} must be {expected}, got {value!r}; fix the config.json",
            field=key,
        )

    def int(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        """An integer >= ``minimum``; required when ``default`` is None."""
        value = self.raw(key, default)
        if value is None:
            raise ConfigError(f"{self.family} config lacks the required key {key!r}", field=key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, f"an integer >= {minimum}", value)
        if key in BOUNDED_KEYS and value > BOUNDED_KEYS[key]:
            raise self._fail(key, f"an integer in [{minimum}, {BOUNDED_KEYS[key]}]", value)
        return value

    def float(self, key: str, default: float | None = None, *, positive: bool = False) -> float:
        """A finite number (> 0 when ``positive``); required when ``default`` is None."""
        value = self.raw(key, default)
        if value is None:
            raise ConfigError(f"{self.family} config lacks the required key {key!r}", field=key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(key, "a finite number", value)
        if positive and value <= 0:
            raise self._fail(key, "a positive number", value)
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        """A boolean."""
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def str(self, key: str, default: str | None, choices: tuple[str, ...] | None = None) -> str | None:
        """A string, optionally one of ``choices``."""
        value = self.raw(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self._fail(key, f"one of {choices}" if choices else "a string", value)
        return value

    def limit(self, key: str, default: tuple[float, float] = (0.0, math.inf)) -> tuple[float, float]:
        """A ``(lo, hi)`` pair with ``0 <= lo < hi`` (hi may be inf)."""
        value = self.raw(key, default)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise self._fail(key, "a pair [lo, hi]", value)
        value = [json_number(v) for v in value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise self._fail(key, "a pair of numbers [lo, hi]", value)
        lo, hi = (float(v) for v in value)
        if not 0.0 <= lo < hi:
            raise self._fail(key, "a pair with 0 <= lo < hi", value)
        return lo, hi

    def rope_theta(self, default: float = 10000.0) -> float:
        """``rope_parameters.rope_theta`` (or the legacy top-level ``rope_theta``), default RoPE only."""
        params = self.raw("rope_parameters", None)
        legacy = self.raw("rope_theta", None)
        scaling = self.raw("rope_scaling", None)
        if scaling is not None:
            raise ConfigError(
                f"{self.family} config sets rope_scaling={scaling!r}; only the default RoPE is supported "
                "(remove rope_scaling)",
                field="rope_scaling",
            )
        if params is None:
            return float(default if legacy is None else legacy)
        if not isinstance(params, dict):
            raise self._fail("rope_parameters", "a dict", params)
        kind = params.get("rope_type", "default")
        if kind != "default":
            raise ConfigError(
                f"{self.family} config has rope_parameters.rope_type={kind!r}; "
                "only 'default' RoPE is supported",
                field="rope_parameters",
            )
        theta = params.get("rope_theta", default if legacy is None else legacy)
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
            raise self._fail("rope_parameters", "a dict with a positive rope_theta", params)
        return float(theta)

    def fields(self, **defaults: Any) -> dict[str, Any]:
        """Keys whose config.json name is the family field's name, each read by the type of its default
        (``bool``, ``int`` >= 1 or a finite ``float``), in the order given: ``{field: value}``.

        Example:
            >>> HFReader({"adapter_rank": 8}, "demo").fields(adapter_rank=128, use_mem_rope=False)
            {'adapter_rank': 8, 'use_mem_rope': False}
        """
        readers = {bool: self.bool, int: self.int, float: self.float}
        return {key: readers[type(default)](key, default) for key, default in defaults.items()}

    def backbone(
        self,
        *,
        hidden_size: int,
        vocab_size: int,
        norm_epsilon: float,
        kv_heads: int | None = None,
        tie: bool = False,
        eps_key: str = "rms_norm_eps",
    ) -> dict[str, Any]:
        """The fields every family reads under transformers' shared names (``FamilyConfig``'s fields),
        with the family's defaults: ``d_model``, ``vocab_size``, ``tie_embeddings``, ``norm_epsilon`` (from
        ``eps_key``), ``num_attention_heads`` (default 32) and ``num_key_value_heads`` (default
        ``kv_heads``, else the attention heads).

        Raises:
            ConfigError: a key of the wrong type or out of range (naming it).

        Example:
            >>> HFReader({"hidden_size": 64}, "demo").backbone(hidden_size=4096, vocab_size=10,
            ...                                                norm_epsilon=1e-5)["num_key_value_heads"]
            32
        """
        heads = self.int("num_attention_heads", 32)
        return {
            "d_model": self.int("hidden_size", hidden_size),
            "vocab_size": self.int("vocab_size", vocab_size),
            "tie_embeddings": self.bool("tie_word_embeddings", tie),
            "norm_epsilon": self.float(eps_key, norm_epsilon, positive=True),
            "num_attention_heads": heads,
            "num_key_value_heads": self.int("num_key_value_heads", heads if kv_heads is None else kv_heads),
        }

    def ignore(self, *keys: str) -> None:
        """Keys this family carries that do not change the math."""
        self.used.update(keys)

    def finish(self) -> None:
        """Raise ``ConfigError`` naming the first key neither read nor ignored."""
        unknown = sorted(k for k in self.d if k not in self.used and k not in COMMON_IGNORED)
        if unknown:
            raise ConfigError(
                f"{self.family} config has unknown key(s) {unknown}; mamba-core does not know how they "
                "change the model. Remove them if they are not model options, or report the key.",
                field=unknown[0],
            )
