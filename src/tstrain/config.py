"""Typed run configuration: dataclasses set from TOML presets and overridden from the command line.

Every knob has one name (``section.field``), one default, one place and one line of
documentation (its ``doc``, shown by ``--help``); a field with a fixed set of values is a
``Literal``. Each section checks its own fields (``rules``) and ``Config`` the ones that span
sections; the TST settings and every rule that relates them to the run's steps, batch and
sequence length are the core's (``schedule.TSTSettings``, named ``tst.FIELD`` here), so the
command line, the Python API and the integrations refuse the same settings in the same words.
What follows from the settings (the switch step, the schedule) comes from the same place. The
resolved config is saved with each run as ``config.toml`` and is all a run needs to be reproduced.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, ConfigTypeError
from .fileio import read_toml
from .options import check, choices_of, knob, option_help
from .schedule import Schedule, TSTSettings, geometry_rules, lr_rules, raise_first

# How the TST rules name the run's geometry and learning rate in a config.
RUN_NAMES = {"steps": "train.steps", "batch_size": "train.batch_size", "seq_len": "train.seq_len"}
LR_NAMES = {"peak": "optim.lr", "warmup": "optim.warmup_steps", "decay_fraction": "optim.decay_fraction",
            "final_lr_fraction": "optim.final_lr_fraction"}

__all__ = ["Config", "ConfigError", "load_config", "preset_names", "field_help", "resume_differences"]


@dataclass
class ModelConfig:
    """The transformer: a Hugging Face causal LM built from these numbers (no hub access)."""

    family: Literal["llama", "qwen3", "qwen3_moe", "mistral", "gpt2"] = knob(
        "llama", "model family (transformers class)")
    hidden_size: int = knob(64, "width d of the residual stream")
    num_layers: int = knob(2, "decoder layers")
    num_heads: int = knob(4, "attention heads")
    num_kv_heads: int = knob(2, "key/value heads (grouped-query attention); GPT-2 has none: equal to num_heads there")
    head_dim: int = knob(0, "width of one head; 0: hidden_size // num_heads")
    intermediate_size: int = knob(172, "MLP width")
    vocab_size: int = knob(0, "vocabulary; 0: the data's, rounded up to pad_vocab_multiple")
    pad_vocab_multiple: int = knob(64, "round a vocabulary taken from the data up to this multiple")
    max_position_embeddings: int = knob(0, "positions the model supports; 0: train.seq_len")
    tie_embeddings: bool = knob(False, "share the input embedding and the LM head")
    rope_theta: float = knob(10000.0, "RoPE base")
    rms_norm_eps: float = knob(1e-5, "epsilon of the RMS norms")
    init_std: float = knob(0.02, "standard deviation of the initial weights")
    num_experts: int = knob(0, "qwen3_moe: routed experts per layer")
    num_experts_per_tok: int = knob(0, "qwen3_moe: experts each position is routed to (top-k)")
    moe_intermediate_size: int = knob(0, "qwen3_moe: MLP width of one expert")
    router_aux_loss_coef: float = knob(0.001, "weight of the router load-balancing loss (MoE only)")
    config_file: str = knob("", "a Hugging Face config.json; when set it defines the architecture")

    def vocab_for(self, data_vocab_size: int) -> int:
        """Return the vocabulary a model on data of ``data_vocab_size`` ids has: ``vocab_size``, or the data's
        rounded up to ``pad_vocab_multiple``."""
        return self.vocab_size or padded_vocab(data_vocab_size, self.pad_vocab_multiple)

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (not self.config_file or Path(self.config_file).is_file(),
             f"model.config_file {self.config_file} does not exist; pass the path of a Hugging Face config.json"),
            (self.hidden_size > 0 and self.num_layers > 0 and self.intermediate_size > 0,
             "model sizes must be positive"),
            (self.num_heads > 0 and (self.head_dim > 0 or self.hidden_size % self.num_heads == 0),
             f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_heads ({self.num_heads}), "
             "or set model.head_dim"),
            (self.head_dim >= 0, f"model.head_dim must be >= 0 (0: hidden_size // num_heads); got {self.head_dim}"),
            (self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0,
             f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads ({self.num_kv_heads})"),
            (self.family != "gpt2" or bool(self.config_file)
             or (self.num_kv_heads == self.num_heads and self.head_dim in (0, self.hidden_size // self.num_heads)),
             f"model.family gpt2 has no grouped-query attention or free head_dim: set model.num_kv_heads = "
             f"model.num_heads ({self.num_heads}) and model.head_dim = 0"),
            (self.family != "qwen3_moe" or bool(self.config_file)
             or (self.num_experts >= 1 and 1 <= self.num_experts_per_tok <= self.num_experts
                 and self.moe_intermediate_size > 0),
             "model.family qwen3_moe needs model.num_experts >= 1, 1 <= model.num_experts_per_tok <= num_experts "
             f"and model.moe_intermediate_size > 0; got {self.num_experts}, {self.num_experts_per_tok}, "
             f"{self.moe_intermediate_size}"),
            (self.router_aux_loss_coef >= 0,
             f"model.router_aux_loss_coef must be >= 0; got {self.router_aux_loss_coef}"),
            (self.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 takes the data's); got {self.vocab_size}"),
        ]


@dataclass(frozen=True)
class TSTConfig(TSTSettings):
    """Token Superposition Training: phase 1 runs for the first round(ratio * steps) steps.

    The settings and their rules are ``schedule.TSTSettings``'s, named ``tst.FIELD`` here; what the
    trainer does at the switch is set here.
    """

    reset_optimizer: bool = knob(False, "at the switch: clear AdamW moments")
    restart_schedule: bool = knob(False, "at the switch: start the LR schedule again for phase 2")
    reinit_embeddings: bool = knob(
        False, "at the switch: re-initialise embedding and LM head (the paper's negative control)")

    @classmethod
    def name_of(cls, setting_name: str) -> str:
        return f"tst.{setting_name}"


@dataclass
class DataConfig:
    """Where the packed tokens live and how much reuse is tolerated."""

    path: str = knob("", "prepared data dir (tstrain prepare-data)", resume_free=True)
    max_epochs: float = knob(4.0, "stop before training if the run would read the corpus more often")
    val_windows: int = knob(64, "held-out windows of seq_len + 1 tokens for the next-token val loss")

    def rules(self) -> list[tuple[bool, str]]:
        return [(self.max_epochs > 0, f"data.max_epochs must be positive; got {self.max_epochs}"),
                (self.val_windows >= 1, f"data.val_windows must be >= 1; got {self.val_windows}")]


@dataclass
class OptimConfig:
    """AdamW with a Warmup-Stable-Decay schedule spanning the whole run."""

    lr: float = knob(3e-3, "peak learning rate")
    warmup_steps: int = knob(20, "linear warmup steps")
    decay_fraction: float = knob(0.1, "linear decay over the last fraction of the steps")
    final_lr_fraction: float = knob(0.0, "LR at the end, as a fraction of lr")
    weight_decay: float = knob(0.1, "AdamW weight decay (matrices only)")
    beta1: float = knob(0.9, "AdamW beta1")
    beta2: float = knob(0.95, "AdamW beta2")
    eps: float = knob(1e-8, "AdamW epsilon")
    grad_clip: float = knob(1.0, "max global grad norm; 0 turns clipping off")

    def rules(self) -> list[tuple[bool, str]]:
        return lr_rules(self.lr, self.warmup_steps, self.decay_fraction, self.final_lr_fraction, LR_NAMES) + [
            (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "optim.beta1 and optim.beta2 must be in [0, 1)"),
            (self.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables clipping); got {self.grad_clip}"),
        ]


@dataclass
class TrainConfig:
    """Batch geometry, length of the run and where the work happens."""

    steps: int = knob(100, "N: optimizer steps of the whole run")
    batch_size: int = knob(8, "B: sequences per optimizer step (global)")
    grad_accum: int = knob(1, "micro-batches per step; batch_size must divide evenly")
    seq_len: int = knob(64, "L: positions the transformer sees, in both phases")
    seed: int = knob(0, "seed of the weights and of the data order")
    device: str = knob("auto", "auto | cpu | cuda[:N]", resume_free=True)
    precision: Literal["auto", "fp32", "bf16"] = knob("auto", "auto: bf16 autocast on CUDA, fp32 on CPU")
    eval_every: int = knob(50, "steps between validation evaluations; 0: at the switch and the end only")
    eval_batch_size: int = knob(16, "validation windows per forward pass", resume_free=True)
    checkpoint_every: int = knob(0, "steps between checkpoints; 0: only at the switch and at the end", resume_free=True)
    keep_checkpoints: int = knob(3, "newest checkpoints kept, besides the one written at the switch", resume_free=True)
    compile: Literal["auto", "on", "off"] = knob("auto", "torch.compile each decoder layer (auto: on CUDA)")
    activation_checkpointing: Literal["none", "full"] = knob(
        "none", "full: each decoder layer recomputes its activations in the backward pass (less memory, ~1/3 more "
        "compute; same numbers)", resume_free=True)
    fused_loss: Literal["auto", "on", "off"] = knob(
        "auto", "LM head + loss fused over position chunks (auto: vocab >= 32768); on CUDA a Triton kernel once "
        "its self-check passed on the device (tstrain doctor)")
    loss_chunk_size: int = knob(2048, "positions per chunk of the fused head + loss")
    skip_nonfinite: bool = knob(False, "skip a step with a non-finite loss or gradient (no update) instead of stopping",
                                resume_free=True)

    def rules(self) -> list[tuple[bool, str]]:
        return [
            *geometry_rules(self.steps, self.batch_size, self.seq_len, RUN_NAMES),
            (self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
             f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum ({self.grad_accum})"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"train.device must be auto, cpu or cuda[:N]; got {self.device!r}"),
            (self.eval_every >= 0 and self.checkpoint_every >= 0,
             "train.eval_every and train.checkpoint_every must be >= 0"),
            (self.loss_chunk_size >= 1, f"train.loss_chunk_size must be >= 1; got {self.loss_chunk_size}"),
            (self.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1; got {self.keep_checkpoints}"),
            (self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1; got {self.eval_batch_size}"),
            (0 <= self.seed < 2**32, f"train.seed must be in [0, 2^32); got {self.seed}"),
        ]


@dataclass
class LogConfig:
    """What gets recorded while training (never changes the numbers: free to change on resume)."""

    every: int = knob(10, "steps between metrics rows", resume_free=True)
    tensorboard: bool = knob(False, "also write TensorBoard event files", resume_free=True)
    progress: bool = knob(True, "show a progress bar", resume_free=True)
    wandb: bool = knob(False, "also log to Weights & Biases (pip install 'tstrain[wandb]'; WANDB_MODE=offline works "
                              "without an account)", resume_free=True)
    wandb_project: str = knob("tstrain", "W&B project", resume_free=True)
    wandb_run: str = knob("", "W&B run name; empty: the run dir's name", resume_free=True)
    peak_flops: float = knob(0.0, "device peak FLOP/s for MFU; 0: known GPUs looked up, else no MFU", resume_free=True)

    def rules(self) -> list[tuple[bool, str]]:
        return [(self.every >= 1, f"log.every must be >= 1; got {self.every}")]


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """Return ``vocab_size`` rounded up to a multiple (matmul-friendly head shapes)."""
    multiple = max(1, multiple)
    return -(-vocab_size // multiple) * multiple


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tst: TSTConfig = field(default_factory=TSTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def schedule(self) -> Schedule:
        """Return the run's per-step plan (``tstrain.Schedule``): the one place the switch, the
        transitions and what each step reads are derived."""
        tr = self.train
        return self.tst.schedule(tr.steps, tr.batch_size, tr.seq_len)

    @property
    def switch_step(self) -> int:
        """Return the first phase-2 step: round(ratio * steps), or 0 when bag_size is 1."""
        return self.tst.switch_step_of(self.train.steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        import tomli_w  # only writing a config needs it

        return tomli_w.dumps(self.to_dict())

    def with_values(self, values: dict[str, Any]) -> Config:
        """Return a checked copy with ``values`` set (nested ``{section: {field: v}}`` or flat ``{"s.f": v}``)."""
        cfg = copy.deepcopy(self)
        apply_overrides(cfg, values)
        validate(cfg)
        return cfg

    def resolved_for(self, data_vocab_size: int) -> Config:
        """Return a copy with the fields that follow the data filled in (vocabulary, positions), checked."""
        m = self.model
        if m.vocab_size and m.vocab_size < data_vocab_size:
            raise ConfigError(
                f"model.vocab_size={m.vocab_size} is smaller than the data's vocabulary of {data_vocab_size}; "
                f"set model.vocab_size >= {data_vocab_size} or 0 to follow the data"
            )
        return self.with_values({
            "model.vocab_size": m.vocab_for(data_vocab_size),
            "model.max_position_embeddings": m.max_position_embeddings or self.train.seq_len})

    def rules(self) -> list[tuple[bool, str]]:
        """Return the checks that span sections: the TST settings' against the run (``TSTSettings.run_rules``)."""
        tr = self.train
        return [
            (self.model.max_position_embeddings == 0 or self.model.max_position_embeddings >= tr.seq_len,
             f"model.max_position_embeddings ({self.model.max_position_embeddings}) is below "
             f"train.seq_len ({tr.seq_len}); raise it or set it to 0 to follow seq_len"),
        ] + self.tst.run_rules(tr.steps, tr.batch_size, tr.seq_len, RUN_NAMES)


SECTIONS = {f.name: f.default_factory for f in fields(Config)}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise a ConfigError naming the field."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        hint = next(a for a in args if a is not type(None))
    if choices_of(hint) is not None:  # checked with the section (``validate``, or the TST settings themselves)
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            words = {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}
            return words[str(value).lower()]
        if hint in (int, float) and isinstance(value, bool):
            raise ValueError
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number; got {value!r}")
            return number
        return str(value)
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, ConfigError):
            raise
        kind = {int: "an integer", float: "a number", bool: "true or false"}.get(hint, "text")
        raise ConfigTypeError(f"{key} must be {kind}; got {value!r}") from None


def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
        else:
            flat[k] = v
    return flat


def apply_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """Set ``values`` on ``cfg`` in place (nested ``{section: {field: v}}`` or flat ``{"s.f": v}``); return it.

    Used while a config is being built; a built one changes through ``Config.with_values``. Each
    section's values are set at once, so the TST settings check themselves as a whole: a value of
    one (``TSTSettings``' fields) given in the wrong form reaches them as given, and they refuse it
    in the words ``Schedule`` uses. Every other field, the tst section's own switches included, is
    refused here.
    """
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in _flatten(values).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; sections are {', '.join(SECTIONS)}")
        names = typing.get_type_hints(SECTIONS[section])
        if name not in names:
            raise ConfigError(f"unknown config field {key!r}; {section} has {', '.join(names)}")
        by_section.setdefault(section, {})[name] = value
    for section, named in by_section.items():
        hints = typing.get_type_hints(SECTIONS[section])
        checked = set(TSTSettings.__dataclass_fields__) if issubclass(SECTIONS[section], TSTSettings) else set()
        values = {name: _coerced(f"{section}.{name}", named[name], hints[name], name in checked)
                  for name in hints if name in named}
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return cfg


def _coerced(key: str, value: Any, hint: Any, checks_itself: bool) -> Any:
    """Return ``_coerce``'s value; for a setting that checks itself (``TSTSettings``'), a value it cannot
    convert as given."""
    try:
        return _coerce(key, value, hint)
    except ConfigError:
        if checks_itself:
            return value
        raise


def preset_names() -> list[str]:
    """Return the names of the presets shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("tstrain.presets").iterdir() if p.name.endswith(".toml"))


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: dict | None = None) -> Config:
    """Return a Config: defaults, then a preset, then a TOML file, then overrides; validated."""
    cfg = Config()
    if preset:
        if preset not in preset_names():
            raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(preset_names())}")
        apply_overrides(cfg, tomllib.loads(resources.files("tstrain.presets").joinpath(f"{preset}.toml").read_text()))
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = read_toml(path, ConfigError, "mend it, or give another --config")
        try:
            apply_overrides(cfg, values)
        except ConfigError as e:  # a field of the file: name the file too
            raise ConfigError(f"{path}: {e}") from None
    if overrides:
        apply_overrides(cfg, overrides)
    # Saved runs must find these again from any working directory.
    if cfg.model.config_file:
        cfg.model.config_file = str(Path(cfg.model.config_file).expanduser().resolve())
    if cfg.data.path:
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first value that cannot work, saying how to fix it: each section's
    choices and rules (``options.check``), then the ones that span sections, which derive the
    schedule and so need sane section values."""
    for section in SECTIONS:
        check(getattr(cfg, section), ConfigError, name=lambda field_name, s=section: f"{s}.{field_name}")
    raise_first(cfg.rules())


def resume_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Return ``section.field: saved X, now Y`` for each field that differs from a run's saved config
    and is not free to change on resume."""
    now = cfg.to_dict()
    diffs = []
    for section, values in saved.items():
        cls = SECTIONS.get(section)
        free = {f.name for f in fields(cls) if f.metadata.get("resume_free")} if cls else set()
        for key, old in values.items():
            new = now.get(section, {}).get(key)
            if key not in free and new != old:
                diffs.append(f"{section}.{key}: saved {old!r}, now {new!r}")
    return diffs


def field_help() -> list[dict[str, Any]]:
    """Return one entry per config field: ``options.option_help``'s for the field, with its ``key``
    (``section.field``): the config's sections are options dataclasses like any verb's."""
    return [{**f, "key": f"{section}.{f['name']}"} for section, cls in SECTIONS.items() for f in option_help(cls)]
