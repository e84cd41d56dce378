"""Typed run configuration: dataclasses set from TOML presets and overridden from the command line.

Every knob has one name (``section.field``), one default and one place. The resolved config is
saved with each run as ``config.toml`` and is all a run needs to be reproduced.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from .superposition import VARIANTS, WEIGHT_SCHEMES


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


MODEL_FAMILIES = ("llama", "qwen3", "qwen3_moe", "mistral", "gpt2")


@dataclass
class ModelConfig:
    """The transformer: a Hugging Face causal LM built from these numbers (no hub access)."""

    family: str = "llama"  # llama | qwen3 | qwen3_moe | mistral | gpt2
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2  # GPT-2 has no GQA: must equal num_heads there
    head_dim: int = 0  # 0: hidden_size // num_heads
    intermediate_size: int = 172
    vocab_size: int = 0  # 0: the data's vocabulary size, rounded up to pad_vocab_multiple
    pad_vocab_multiple: int = 64
    max_position_embeddings: int = 0  # 0: train.seq_len
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    num_experts: int = 0  # qwen3_moe: routed experts per layer
    num_experts_per_tok: int = 0  # qwen3_moe: experts each position is routed to (top-k)
    moe_intermediate_size: int = 0  # qwen3_moe: MLP width of one expert
    router_aux_loss_coef: float = 0.001  # weight of the router load-balancing loss (MoE only)
    config_file: str = ""  # a Hugging Face config.json; when set it defines the architecture


@dataclass
class TSTConfig:
    """Token Superposition Training: phase 1 runs for the first round(ratio * steps) steps."""

    bag_size: int = 4
    ratio: float = 0.3
    weights: str = "uniform"  # uniform | power | exponential | first | mi
    mi_exponent: float = -1.25  # k of the MI(d) = C0 + a*d^k fit, for weights = "mi"
    variant: str = "both"  # both | input | output
    reset_optimizer: bool = False  # at the switch: clear AdamW moments
    restart_schedule: bool = False  # at the switch: start the LR schedule again for phase 2
    expand: str = "length"  # phase 1 reads s x the text as longer windows (length) or s x the windows of L/s bags (batch)
    reinit_embeddings: bool = False  # at the switch: re-initialise embedding and LM head (the paper's negative control)
    transition: str = "hard"  # hard (the paper) | step-down (bag size s -> s/2 -> ... within phase 1) | blend
    transition_steps: int = 0  # blend: steps over which the bag share falls from 1 to 0, centred on the switch (0: half of phase 1)


@dataclass
class DataConfig:
    """Where the packed tokens live and how much reuse is tolerated."""

    path: str = ""
    max_epochs: float = 4.0  # stop before training if the run would read the corpus more often
    val_windows: int = 64  # held-out windows of seq_len + 1 tokens for the next-token val loss


@dataclass
class OptimConfig:
    """AdamW with a Warmup-Stable-Decay schedule spanning the whole run."""

    lr: float = 3e-3
    warmup_steps: int = 20
    decay_fraction: float = 0.1  # linear decay over the last fraction of the steps
    final_lr_fraction: float = 0.0  # LR at the end, as a fraction of lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off


@dataclass
class TrainConfig:
    """Batch geometry, length of the run and where the work happens."""

    steps: int = 100
    batch_size: int = 8  # sequences per optimizer step (global)
    grad_accum: int = 1  # micro-batches per step; batch_size must divide evenly
    seq_len: int = 64  # L: positions the transformer sees, in both phases
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on cuda, fp32 on cpu) | fp32 | bf16
    eval_every: int = 50
    eval_batch_size: int = 16
    checkpoint_every: int = 0  # 0: only at the switch and at the end
    keep_checkpoints: int = 3  # newest kept, besides the one written at the switch
    compile: str = "auto"  # torch.compile each decoder layer: auto (on CUDA) | on | off
    fused_loss: str = "auto"  # LM head + loss fused over position chunks: auto (vocab >= 32768) | on | off
    loss_chunk_size: int = 2048  # positions per chunk of the fused head + loss
    skip_nonfinite: bool = False  # skip a step with a non-finite loss or gradient (no update) instead of stopping


@dataclass
class LogConfig:
    """What gets recorded while training."""

    every: int = 10
    tensorboard: bool = False
    progress: bool = True
    peak_flops: float = 0.0  # device peak FLOP/s for MFU; 0: known GPUs looked up, else no MFU


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tst: TSTConfig = field(default_factory=TSTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def switch_step(self) -> int:
        """Return the first phase-2 step: round(ratio * steps), or 0 when bag_size is 1."""
        if self.tst.bag_size == 1:
            return 0
        return round(self.tst.ratio * self.train.steps)

    @property
    def blend_steps(self) -> int:
        """Return the width of a blended transition: ``tst.transition_steps``, or half of phase 1 when 0."""
        return self.tst.transition_steps or max(2, self.switch_step // 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _section_classes() -> dict[str, type]:
    return {f.name: type(getattr(Config(), f.name)) for f in fields(Config)}


def _coerce(section: str, name: str, value: Any, kind: type) -> Any:
    """Return ``value`` converted to the field's type, or raise a ConfigError naming the field."""
    key = f"{section}.{name}"
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a {kind.__name__}; got {value!r}") from None


def apply_overrides(cfg: Config, values: dict[str, dict[str, Any]] | dict[str, Any]) -> Config:
    """Return ``cfg`` with values set, from nested ``{section: {field: v}}`` or flat ``{"s.f": v}``."""
    classes = _section_classes()
    flat: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[f"{k}.{k2}"] = v2
        else:
            flat[k] = v
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if section not in classes:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; sections are {', '.join(classes)}")
        types = {f.name: f.type for f in fields(classes[section])}
        if name not in types:
            raise ConfigError(f"unknown config field {key!r}; {section} has {', '.join(types)}")
        kind = {"int": int, "float": float, "bool": bool, "str": str}[types[name]]
        setattr(getattr(cfg, section), name, _coerce(section, name, value, kind))
    return cfg


def preset_names() -> list[str]:
    """Return the names of the presets shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("tstrain.presets").iterdir() if p.name.endswith(".toml"))


def load_config(preset: str | None = None, config_file: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Return a Config: defaults, then a preset, then a TOML file, then overrides; validated."""
    cfg = Config()
    if preset:
        if preset not in preset_names():
            raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(preset_names())}")
        text = resources.files("tstrain.presets").joinpath(f"{preset}.toml").read_text()
        apply_overrides(cfg, tomllib.loads(text))
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        apply_overrides(cfg, tomllib.loads(path.read_text()))
    if overrides:
        apply_overrides(cfg, overrides)
    if cfg.model.config_file:  # saved runs must find it again from any working directory
        cfg.model.config_file = str(Path(cfg.model.config_file).expanduser().resolve())
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first value that cannot work, saying how to fix it."""
    m, t, tr, o, d = cfg.model, cfg.tst, cfg.train, cfg.optim, cfg.data
    checks = [
        (t.bag_size >= 1, f"tst.bag_size must be an integer >= 1 (1 is the baseline); got {t.bag_size}"),
        (0.0 <= t.ratio < 1.0, f"tst.ratio must be in [0, 1): phase 2 needs at least one step; got {t.ratio}"),
        (t.variant in VARIANTS, f"tst.variant must be one of {VARIANTS}; got {t.variant!r}"),
        (t.expand in ("length", "batch"), f"tst.expand must be length or batch; got {t.expand!r}"),
        (t.expand == "length" or (t.variant != "output" and tr.seq_len % t.bag_size == 0),
         f"tst.expand=batch needs bag inputs (tst.variant both or input) and train.seq_len ({tr.seq_len}) divisible "
         f"by tst.bag_size ({t.bag_size}): phase 1 then sees seq_len / bag_size positions per sequence"),
        (t.weights in WEIGHT_SCHEMES, f"tst.weights must be one of {WEIGHT_SCHEMES}; got {t.weights!r}"),
        (tr.steps >= 1, f"train.steps must be >= 1; got {tr.steps}"),
        (tr.seq_len >= 1, f"train.seq_len must be positive; got {tr.seq_len}"),
        (tr.batch_size >= 1, f"train.batch_size must be >= 1; got {tr.batch_size}"),
        (tr.grad_accum >= 1 and tr.batch_size % tr.grad_accum == 0,
         f"train.batch_size ({tr.batch_size}) must be a multiple of train.grad_accum ({tr.grad_accum})"),
        (tr.device in ("auto", "cpu", "cuda") or tr.device.startswith("cuda:"),
         f"train.device must be auto, cpu or cuda[:N]; got {tr.device!r}"),
        (tr.precision in ("auto", "fp32", "bf16"), f"train.precision must be auto, fp32 or bf16; got {tr.precision!r}"),
        (tr.eval_every >= 0 and tr.checkpoint_every >= 0, "train.eval_every and train.checkpoint_every must be >= 0"),
        (tr.compile in ("auto", "on", "off"), f"train.compile must be auto, on or off; got {tr.compile!r}"),
        (tr.fused_loss in ("auto", "on", "off"), f"train.fused_loss must be auto, on or off; got {tr.fused_loss!r}"),
        (tr.loss_chunk_size >= 1, f"train.loss_chunk_size must be >= 1; got {tr.loss_chunk_size}"),
        (tr.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1; got {tr.keep_checkpoints}"),
        (o.lr > 0, f"optim.lr must be positive; got {o.lr}"),
        (o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0; got {o.warmup_steps}"),
        (0.0 <= o.decay_fraction <= 1.0, f"optim.decay_fraction must be in [0, 1]; got {o.decay_fraction}"),
        (0.0 <= o.final_lr_fraction <= 1.0, f"optim.final_lr_fraction must be in [0, 1]; got {o.final_lr_fraction}"),
        (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0, "optim.beta1 and optim.beta2 must be in [0, 1)"),
        (o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables clipping); got {o.grad_clip}"),
        (m.family in MODEL_FAMILIES,
         f"model.family must be one of {MODEL_FAMILIES} (or set model.config_file to a config.json); got {m.family!r}"),
        (not m.config_file or Path(m.config_file).is_file(),
         f"model.config_file {m.config_file} does not exist; pass the path of a Hugging Face config.json"),
        (m.hidden_size > 0 and m.num_layers > 0 and m.intermediate_size > 0, "model sizes must be positive"),
        (m.num_heads > 0 and (m.head_dim > 0 or m.hidden_size % m.num_heads == 0),
         f"model.hidden_size ({m.hidden_size}) must be a multiple of model.num_heads ({m.num_heads}), "
         "or set model.head_dim"),
        (m.head_dim >= 0, f"model.head_dim must be >= 0 (0: hidden_size // num_heads); got {m.head_dim}"),
        (m.num_kv_heads > 0 and m.num_heads % m.num_kv_heads == 0,
         f"model.num_heads ({m.num_heads}) must be a multiple of model.num_kv_heads ({m.num_kv_heads})"),
        (m.family != "gpt2" or m.config_file or (m.num_kv_heads == m.num_heads and m.head_dim in (0, m.hidden_size // m.num_heads)),
         f"model.family gpt2 has no grouped-query attention or free head_dim: set model.num_kv_heads = "
         f"model.num_heads ({m.num_heads}) and model.head_dim = 0"),
        (m.family != "qwen3_moe" or m.config_file
         or (m.num_experts >= 1 and 1 <= m.num_experts_per_tok <= m.num_experts and m.moe_intermediate_size > 0),
         "model.family qwen3_moe needs model.num_experts >= 1, 1 <= model.num_experts_per_tok <= num_experts "
         f"and model.moe_intermediate_size > 0; got {m.num_experts}, {m.num_experts_per_tok}, {m.moe_intermediate_size}"),
        (m.router_aux_loss_coef >= 0, f"model.router_aux_loss_coef must be >= 0; got {m.router_aux_loss_coef}"),
        (m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 takes the data's); got {m.vocab_size}"),
        (m.max_position_embeddings == 0 or m.max_position_embeddings >= tr.seq_len,
         f"model.max_position_embeddings ({m.max_position_embeddings}) is below train.seq_len ({tr.seq_len}); "
         "raise it or set it to 0 to follow seq_len"),
        (d.max_epochs > 0, f"data.max_epochs must be positive; got {d.max_epochs}"),
        (d.val_windows >= 1, f"data.val_windows must be >= 1; got {d.val_windows}"),
        (cfg.log.every >= 1, f"log.every must be >= 1; got {cfg.log.every}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if t.bag_size > 1 and 0 < t.ratio and cfg.switch_step == 0:
        raise ConfigError(
            f"tst.ratio={t.ratio} of {tr.steps} steps rounds to no phase-1 step; raise the ratio or the steps, "
            "or set tst.ratio=0 for the baseline"
        )
    from .phases import validate_transition  # phases builds on this module; imported late to avoid a cycle

    validate_transition(cfg)


def field_help() -> list[tuple[str, Any, type, str]]:
    """Return ``(section.field, default, type, section doc)`` for every config field, for the CLI."""
    out = []
    for section, cls in _section_classes().items():
        default = cls()
        for f in fields(cls):
            out.append((f"{section}.{f.name}", getattr(default, f.name), f.type, (cls.__doc__ or "").strip()))
    return out
