"""Types and ranges of every config field, as data, checked before anything else looks at a config.

``SCHEMA`` maps each architecture to ``field -> Rule``: the kind of value (``"int"``, ``"float"``,
``"bool"``, ``"pair"``, ``"enum"``, ``"int-or-auto"``) and its range or allowed values. JSON leaves a
careless or hostile config free to say ``"tie_word_embeddings": "false"``, ``"n_layer": 2e6`` or
``"layer_norm_epsilon": Infinity``; each config dataclass calls ``check_fields`` first thing in its
``__post_init__``, so every dialect (and a config built in Python) is checked by this one table:

* ints are ints (not bools, floats or strings) within ``[lo, hi]``;
* floats are ints or floats (not bools or strings), finite, within their range (open or closed);
* bools are ``True``/``False`` only;
* enumerations take one of their values; pairs are two numbers (``dt_limit``'s upper end may be inf);
* cross-field rules: ``0 < dt_min < dt_max``; ``0 < A_init_range[0] <= A_init_range[1]``;
* the whole model: ``parameter_count(config)`` is refused above ``MAX_PARAMETERS`` (absurd, whatever the
  machine), and ``check_memory`` refuses, before allocation, a model whose bytes exceed the memory
  available (``MemAvailable`` of ``/proc/meminfo``, or ``MAMBA_CORE_MEMORY_LIMIT`` bytes when set).

Nullable fields (``mixer_rms_eps``) are checked by their config class. The tables of the other
configs (``Mamba3Config``, the hybrid family configs of ``mamba_core.families`` and the block configs of
``mamba_core.block_config``) live in ``mamba_core.family_schema``, keyed by config class, with the same
``Rule`` kinds plus nullable values and lists (``"seq"``); ``check_fields`` dispatches there for them.

The limits are far above every published Mamba (the largest: 64 layers, d_model 8192, vocab 256k) and
far below what would hang or exhaust a machine. Spec layer: numpy-free, framework-free.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from mamba_core.errors import ConfigError, ResourceError

MAX_PARAMETERS = 2**40  # ~1.1e12 parameters: 4 TiB of float32
MEMORY_LIMIT_ENV = "MAMBA_CORE_MEMORY_LIMIT"
MAX_STRING = 256  # a name field (activation, layer type): longer is junk


@dataclass(frozen=True)
class Rule:
    """How one field is checked.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"enum"``, ``"str"`` (a name the config class checks
            against its own set), ``"pair"``, ``"int-or-auto"``, ``"seq"`` (a
            list whose length is in ``[lo, hi]`` and whose items follow ``item``) or ``"config"`` (an
            instance of the class named ``choices[0]``: a nested config, validated by its own class).
        lo, hi: inclusive bounds for ints; for floats, bounds that ``open_lo`` / ``open_hi`` make strict.
        choices: the allowed values of an enumeration.
        allow_inf_hi: a pair whose upper end may be +inf (``dt_limit``).
        nullable: None (json null) is accepted too (a field whose absence means "derive it").
        item: the rule of each item of a ``"seq"``.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[Any, ...] = ()
    allow_inf_hi: bool = False
    nullable: bool = False
    item: Rule | None = None

    def describe(self) -> str:
        """The expectation in words: ``"an int in [1, 65536]"``."""
        text = self._describe()
        return f"null or {text}" if self.nullable else text

    def _describe(self) -> str:
        if self.kind == "seq":
            size = f"{_fmt(self.lo)}" if self.lo == self.hi else f"{_fmt(self.lo)} to {_fmt(self.hi)}"
            return f"a list of {size} items, each {self.item.describe()}"
        if self.kind == "config":
            return f"a {self.choices[0]}"
        if self.kind == "str":
            return f"a string of at most {MAX_STRING} characters"
        if self.kind == "bool":
            return "true or false (a JSON boolean, not a string or number)"
        if self.kind == "enum":
            return f"one of {list(self.choices)}"
        lo = "(" if self.open_lo else "["
        hi = ")" if self.open_hi else "]"
        span = f"{lo}{_fmt(self.lo)}, {_fmt(self.hi)}{hi}"
        if self.kind == "int":
            return f"an integer in {span}"
        if self.kind == "int-or-auto":
            return f'"auto" or an integer in {span}'
        if self.kind == "pair":
            inf = " (hi may be Infinity)" if self.allow_inf_hi else ""
            return f"a pair [lo, hi] of numbers in {span}{inf}"
        return f"a finite number in {span}"


def _fmt(v) -> str:
    if v is None:
        return "inf"
    if isinstance(v, float) and v.is_integer() and v >= 2**10:
        return f"2**{int(math.log2(v))}" if math.log2(v).is_integer() else f"{v:g}"
    if isinstance(v, float) and abs(v) >= 1e5:
        return f"{v:g}"
    if isinstance(v, int) and v >= 2**10 and (v & (v - 1)) == 0:
        return f"2**{v.bit_length() - 1}"
    return repr(v)


_COMMON = {
    "d_model": Rule("int", 1, 2**18),
    "n_layer": Rule("int", 1, 2**14),
    "vocab_size": Rule("int", 1, 2**24),
    "pad_vocab_size_multiple": Rule("int", 1, 2**16),
    "d_state": Rule("int", 1, 2**14),
    "d_conv": Rule("int", 1, 2**10),
    "expand": Rule("float", 0.0, 2**10, open_lo=True),
    "conv_bias": Rule("bool"),
    "bias": Rule("bool"),
    "residual_in_fp32": Rule("bool"),
    "fused_add_norm": Rule("bool"),
    "tie_embeddings": Rule("bool"),
    "norm_epsilon": Rule("float", 0.0, 1.0, open_lo=True),
    "dt_min": Rule("float", 0.0, 1e3, open_lo=True),
    "dt_max": Rule("float", 0.0, 1e3, open_lo=True),
    "dt_init_floor": Rule("float", 0.0, 1e3),
    "initializer_range": Rule("float", 0.0, 1e3),
    "rescale_prenorm_residual": Rule("bool"),
    "d_intermediate": Rule("int", 0, 2**20),
}
SCHEMA: dict[str, dict[str, Rule]] = {
    "mamba1": {
        **_COMMON,
        "dt_rank": Rule("int-or-auto", 1, 2**16),
        "dt_init": Rule("enum", choices=("random", "constant")),
        "dt_scale": Rule("float", 0.0, 1e3),
        "mixer_rms_weights": Rule("bool"),
    },
    "mamba2": {
        **_COMMON,
        "headdim": Rule("int", 1, 2**16),
        "ngroups": Rule("int", 1, 2**16),
        "chunk_size": Rule("int", 1, 2**16),
        "dt_limit": Rule("pair", 0.0, None, allow_inf_hi=True),
        "A_init_range": Rule("pair", 0.0, 1e6, open_lo=True),
    },
}


# keys of the dialects that are not fields but feed arithmetic in the codec (HF's derived widths)
RAW_RULES = {
    "intermediate_size": Rule("int", 1, 2**28),
    "num_heads": Rule("int", 1, 2**24),
}


def check_raw(where: str, key: str, value, rule: Rule | None = None, *, arch: str = "mamba2") -> None:
    """Check a value as a dialect's json holds it, before the codec computes with it.

    Args:
        where: how to name the source (``"hf config"``), for the message.
        key: the json key (named in the message and as ``ConfigError.field``).
        value: the value read.
        rule: the rule; None = ``RAW_RULES[key]``, else ``SCHEMA[arch][key]``.

    Raises:
        ConfigError: the value is of the wrong type or out of range.
    """
    if rule is None:
        rule = RAW_RULES.get(key) or SCHEMA[arch][key]
    check_value(where, key, rule, value)


def check_choice(label: str, value, choices, *, field: str) -> None:
    """Check that ``value`` is one of ``choices`` (a field a config class checks itself).

    Raises:
        ConfigError: ``"<label> must be one of <choices>, got <value>"``, naming ``field``.

    Example:
        >>> check_choice("MLPConfig.layout", "split", ("fused", "split"), field="layout")
    """
    if value not in choices:
        raise ConfigError(f"{label} must be one of {choices}, got {value!r}", field=field)


def check_kind(where: str, key: str, value, kind: type | tuple[type, ...], expected: str) -> None:
    """Refuse a structural json value of the wrong type (a key or section the codec dispatches on).

    Raises:
        ConfigError: naming ``where.key``, ``expected`` and the value received.
    """
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ConfigError(
            f"{where}.{key} must be {expected}, got {shown} ({type(value).__name__})", field=key
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(arch_name: str, name: str, rule: Rule, value) -> ConfigError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ConfigError(
        f"{arch_name}.{name} must be {rule.describe()}, got {shown} ({type(value).__name__})",
        field=name.split("[", 1)[0],
    )


def _in_range(v: float, rule: Rule) -> bool:
    if rule.lo is not None and (v <= rule.lo if rule.open_lo else v < rule.lo):
        return False
    if rule.hi is not None and (v >= rule.hi if rule.open_hi else v > rule.hi):
        return False
    return True


def check_value(arch_name: str, name: str, rule: Rule, value) -> None:
    """Check one field value against its rule.

    Raises:
        ConfigError: naming ``arch_name.name``, the expectation and the value received.

    Example:
        >>> check_value("Mamba1Config", "bias", SCHEMA["mamba1"]["bias"], "false")
        Traceback (most recent call last):
        ...
        mamba_core.errors.ConfigError: Mamba1Config.bias must be true or false (a JSON boolean, not a \
string or number), got 'false' (str)
    """
    kind = rule.kind
    if value is None and rule.nullable:
        return
    if kind == "seq":
        if not isinstance(value, (list, tuple)) or not rule.lo <= len(value) <= rule.hi:
            raise _bad(arch_name, name, rule, value)
        for i, item in enumerate(value):
            check_value(arch_name, f"{name}[{i}]", rule.item, item)
        return
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "config":
        ok = type(value).__name__ == rule.choices[0]
    elif kind == "str":  # a name whose allowed values the config class checks itself
        ok = isinstance(value, str) and len(value) <= MAX_STRING
    elif kind == "enum":
        ok = isinstance(value, str) and value in rule.choices
    elif kind == "int-or-auto" and value == "auto" and isinstance(value, str):
        ok = True
    elif kind in ("int", "int-or-auto"):
        ok = isinstance(value, int) and not isinstance(value, bool) and _in_range(value, rule)
    elif kind == "float":
        ok = _is_number(value) and _finite(value) and _in_range(float(value), rule)
    elif kind == "pair":
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_number(v) for v in value)
            and _finite(value[0])
            and (_finite(value[1]) or (rule.allow_inf_hi and value[1] == math.inf))
            and all(_in_range(float(v), rule) for v in value)
            and value[0] <= value[1]
        )
    else:  # a schema typo, not user input
        raise KeyError(f"unknown rule kind {kind!r} for {name!r}")
    if not ok:
        raise _bad(arch_name, name, rule, value)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def check_fields(config) -> None:
    """Check every field of a config dataclass against its schema (first thing in its ``__post_init__``).

    Mamba-1/Mamba-2 configs are checked against ``SCHEMA[config.arch]`` here; every other config
    (Mamba-3, the hybrid families, the block configs) against ``mamba_core.family_schema``.

    Raises:
        ConfigError: the first field of the wrong type or out of range (naming it), ``dt_min >= dt_max``,
            or a ``dt_limit`` whose ends are not ``lo < hi`` (and the family tables' cross-field rules).
        ResourceError: more than ``MAX_PARAMETERS`` parameters (with the count).
    """
    if getattr(config, "arch", None) not in SCHEMA:
        from mamba_core.family_schema import check_family_fields  # its tables import this module

        check_family_fields(config)
        return
    cls = type(config).__name__
    for name, rule in SCHEMA[config.arch].items():
        check_value(cls, name, rule, getattr(config, name))
    if not config.dt_min < config.dt_max:
        raise ConfigError(
            f"{cls}.dt_min must be below dt_max, got dt_min={config.dt_min!r} and dt_max={config.dt_max!r} "
            "(HF: time_step_min / time_step_max)",
            field="dt_min",
        )
    if config.arch == "mamba2":
        lo, hi = config.dt_limit
        if not lo < hi:
            raise ConfigError(
                f"{cls}.dt_limit must satisfy 0 <= lo < hi, got {config.dt_limit!r}", field="dt_limit"
            )
    check_parameter_count(config)


def _rank(config) -> int:
    rank = getattr(config, "dt_rank", "auto")
    return math.ceil(config.d_model / 16) if rank == "auto" else int(rank)


def parameter_count(config) -> int:
    """The number of parameters of the LM a config describes, computed from the config alone.

    Counts the embedding (padded vocab), every layer's mixer, norm(s) and MLP, ``norm_f`` and, when
    untied, the LM head; equals the sum of the layout's shapes, computed in O(1) for Mamba-1/Mamba-2 (a
    layout of 2e6 layers is never built to count it). Other architectures (Mamba-3, the hybrid families)
    sum their layout.

    Example:
        >>> from mamba_core.config import Mamba1Config
        >>> parameter_count(Mamba1Config(d_model=768, n_layer=24, vocab_size=50277))
        129135360
    """
    if getattr(config, "arch", None) not in SCHEMA:  # Mamba-3, the hybrid families
        from mamba_core.family_schema import family_parameter_count  # its tables import this module

        return family_parameter_count(config)
    d = config.d_model
    e = int(config.expand * d)
    n = config.d_state
    k = config.d_conv
    bias = 1 if config.bias else 0
    conv_bias = 1 if config.conv_bias else 0
    vocab = math.ceil(config.vocab_size / config.pad_vocab_size_multiple) * config.pad_vocab_size_multiple
    if config.arch == "mamba1":
        r = _rank(config)
        layer = (
            d * 2 * e
            + bias * 2 * e  # in_proj
            + e * k
            + conv_bias * e  # conv1d
            + e * (r + 2 * n)  # x_proj
            + r * e
            + e  # dt_proj (weight, bias)
            + e * n
            + e  # A_log, D
            + e * d
            + bias * d  # out_proj
            + d  # norm
        )
        if getattr(config, "mixer_rms_weights", False):
            layer += r + 2 * n  # dt_layernorm, b_layernorm, c_layernorm
    else:
        g, h = config.ngroups, e // config.headdim
        conv_dim = e + 2 * g * n
        d_in_proj = 2 * e + 2 * g * n + h
        layer = (
            d * d_in_proj
            + bias * d_in_proj
            + conv_dim * k
            + conv_bias * conv_dim
            + 3 * h  # dt_bias, A_log, D
            + e  # gated norm
            + e * d
            + bias * d
            + d
        )
    if config.has_mlp:
        layer += d + 3 * config.d_mlp * d  # norm2, mlp.fc1 (2M x d), mlp.fc2 (d x M)
    head = 0 if config.tie_embeddings else vocab * d
    return vocab * d + config.n_layer * layer + d + head


def check_parameter_count(config) -> int:
    """``parameter_count(config)``, refused above ``MAX_PARAMETERS``.

    Raises:
        ResourceError: with the count and the limit.
    """
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ResourceError(
            f"{type(config).__name__} describes {count:,} parameters ({_human(count * 4)} in float32), "
            f"above the limit of {MAX_PARAMETERS:,}: check d_model, n_layer, vocab_size, d_state and expand",
            needed=count,
            limit=MAX_PARAMETERS,
        )
    return count


def available_memory() -> int | None:
    """Bytes a new model may take: ``MAMBA_CORE_MEMORY_LIMIT`` when set, else the host's ``MemAvailable``
    (None when neither is known, e.g. not Linux).

    Raises:
        ConfigError: ``MAMBA_CORE_MEMORY_LIMIT`` is not a positive integer.
    """
    env = os.environ.get(MEMORY_LIMIT_ENV)
    if env is not None:
        try:
            limit = int(env)
        except ValueError:
            limit = 0
        if limit < 1:
            raise ConfigError(f"{MEMORY_LIMIT_ENV}={env!r} must be a positive number of bytes")
        return limit
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(config, bytes_per_parameter: int, *, what: str = "the model") -> int:
    """Refuse, before allocation, a model that cannot fit in the memory available.

    Args:
        config: the model config.
        bytes_per_parameter: 4 for float32, 2 for bfloat16 / float16.
        what: how to name the allocation in the message.

    Returns:
        The bytes the parameters take.

    Raises:
        ResourceError: more parameters than ``MAX_PARAMETERS``, or more bytes than ``available_memory()``
            (both figures in the message, with ``MAMBA_CORE_MEMORY_LIMIT`` named as the override).
    """
    count = check_parameter_count(config)
    needed = count * bytes_per_parameter
    limit = available_memory()
    if limit is not None and needed > limit:
        raise ResourceError(
            f"{what} needs {_human(needed)} ({count:,} parameters x {bytes_per_parameter} bytes) but only "
            f"{_human(limit)} of memory is available; use a smaller config or a narrower dtype, or set "
            f"{MEMORY_LIMIT_ENV} (bytes) to allow more",
            needed=needed,
            limit=limit,
        )
    return needed


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
