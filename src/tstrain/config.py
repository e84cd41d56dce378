"""Typed run configuration: dataclasses set from TOML presets and overridden from the command line.

Every knob has one name (``section.field``), one default, one place and one line of
documentation (its ``doc``, shown by ``--help``); a field with a fixed set of values is a
``Literal``. The config owns its rules: each section checks its own fields, ``Config.check`` the
ones that span sections (the transitions among them), and it derives what follows from its
fields (the switch step, the blend window, the step-down's bag sizes, which fields may change on
resume). The resolved config is saved with each run as ``config.toml`` and is all a run needs to
be reproduced.
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
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError
from .options import choices_of, knob

if TYPE_CHECKING:
    from .schedule import Schedule

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


@dataclass
class TSTConfig:
    """Token Superposition Training: phase 1 runs for the first round(ratio * steps) steps."""

    bag_size: int = knob(4, "s: tokens averaged into one position in phase 1 (1 is the baseline)")
    ratio: float = knob(0.3, "r: the fraction of the steps in phase 1 (0 is the baseline)")
    weights: Literal["uniform", "power", "exponential", "first", "mi"] = knob(
        "uniform", "weights of a target bag's tokens in the multi-hot cross entropy")
    mi_exponent: float = knob(-1.25, "k of the MI(d) = C0 + a*d^k fit, for weights = mi")
    variant: Literal["both", "input", "output"] = knob(
        "both", "bags on both sides, the input side only or the output side only")
    reset_optimizer: bool = knob(False, "at the switch: clear AdamW moments")
    restart_schedule: bool = knob(False, "at the switch: start the LR schedule again for phase 2")
    expand: Literal["length", "batch"] = knob(
        "length", "phase 1 reads s x the text as longer windows (length) or s x the windows of L/s bags (batch)")
    reinit_embeddings: bool = knob(
        False, "at the switch: re-initialise embedding and LM head (the paper's negative control)")
    transition: Literal["hard", "step-down", "blend"] = knob(
        "hard", "the switch (the paper), bag size s -> s/2 -> ... within phase 1, or a blended mix of both")
    transition_steps: int = knob(0, "blend: steps over which the bag share falls from 1 to 0, centred on the switch "
                                    "(0: half of phase 1)")

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.bag_size >= 1, f"tst.bag_size must be an integer >= 1 (1 is the baseline); got {self.bag_size}"),
            (0.0 <= self.ratio < 1.0,
             f"tst.ratio must be in [0, 1): phase 2 needs at least one step; got {self.ratio}"),
            (self.transition_steps >= 0, f"tst.transition_steps must be >= 0; got {self.transition_steps}"),
        ]


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
        return [
            (self.lr > 0, f"optim.lr must be positive; got {self.lr}"),
            (self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0; got {self.warmup_steps}"),
            (0.0 <= self.decay_fraction <= 1.0, f"optim.decay_fraction must be in [0, 1]; got {self.decay_fraction}"),
            (0.0 <= self.final_lr_fraction <= 1.0,
             f"optim.final_lr_fraction must be in [0, 1]; got {self.final_lr_fraction}"),
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
        "auto", "LM head + loss fused over position chunks (auto: vocab >= 32768); on CUDA a Triton kernel when "
        "triton imports")
    loss_chunk_size: int = knob(2048, "positions per chunk of the fused head + loss")
    skip_nonfinite: bool = knob(False, "skip a step with a non-finite loss or gradient (no update) instead of stopping",
                                resume_free=True)

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.steps >= 1, f"train.steps must be >= 1; got {self.steps}"),
            (self.seq_len >= 1, f"train.seq_len must be positive; got {self.seq_len}"),
            (self.batch_size >= 1, f"train.batch_size must be >= 1; got {self.batch_size}"),
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
        from .schedule import Schedule  # the method's core (torch): not needed to parse a config

        t, tr = self.tst, self.train
        return Schedule(tr.steps, tr.batch_size, tr.seq_len, t.bag_size, t.ratio, t.variant, t.transition,
                        t.transition_steps, t.expand)

    @property
    def switch_step(self) -> int:
        """Return the first phase-2 step: round(ratio * steps), or 0 when bag_size is 1."""
        return self.schedule.switch_step

    @property
    def blend_steps(self) -> int:
        """Return the width of a blended transition: ``tst.transition_steps``, or half of phase 1 when 0."""
        return self.schedule.blend_steps

    def blend_window(self) -> tuple[int, int]:
        """Return the blend's ``[first, end)`` steps: ``blend_steps`` steps centred on the switch."""
        return self.schedule.blend_window()

    def step_down_sizes(self) -> list[int]:
        """Return the bag sizes a step-down phase 1 goes through (``s, s/2, ...``)."""
        return self.schedule.step_down_sizes()

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
            "model.vocab_size": m.vocab_size or padded_vocab(data_vocab_size, m.pad_vocab_multiple),
            "model.max_position_embeddings": m.max_position_embeddings or self.train.seq_len})

    def rules(self) -> list[tuple[bool, str]]:
        """Return the checks that span sections."""
        t, tr = self.tst, self.train
        return [
            (t.expand == "length" or (t.variant != "output" and tr.seq_len % t.bag_size == 0),
             f"tst.expand=batch needs bag inputs (tst.variant both or input) and train.seq_len ({tr.seq_len}) "
             f"divisible by tst.bag_size ({t.bag_size}): phase 1 then sees seq_len / bag_size positions per sequence"),
            (self.model.max_position_embeddings == 0 or self.model.max_position_embeddings >= tr.seq_len,
             f"model.max_position_embeddings ({self.model.max_position_embeddings}) is below "
             f"train.seq_len ({tr.seq_len}); raise it or set it to 0 to follow seq_len"),
            (not (t.bag_size > 1 and 0 < t.ratio and self.switch_step == 0),
             f"tst.ratio={t.ratio} of {tr.steps} steps rounds to no phase-1 step; raise the ratio or the steps, "
             "or set tst.ratio=0 for the baseline"),
            (self.switch_step < tr.steps,
             f"tst.ratio={t.ratio} of {tr.steps} steps switches at step {self.switch_step} and leaves no phase-2 step: "
             "the model would never train on next-token prediction; lower the ratio or raise train.steps"),
        ]

    def transition_rules(self) -> list[tuple[bool, str]]:
        """Return the checks of a step-down or blended transition (none for the hard switch or the baseline)."""
        t, S, N = self.tst, self.switch_step, self.train.steps
        if t.transition == "hard" or S == 0:
            return []
        if t.expand != "length":
            return [(False, f"tst.transition={t.transition} works with tst.expand=length only; use the hard switch "
                            "with batch expansion")]
        if t.transition == "step-down":
            stages = len(self.step_down_sizes())
            return [(stages > 1, f"tst.transition=step-down halves the bag size within phase 1 (4 -> 2 -> 1) "
                                 f"and needs an even tst.bag_size above 2; got {t.bag_size}. "
                                 "Use transition=blend or hard"),
                    (S >= stages, f"tst.transition=step-down needs at least one phase-1 step per bag size ({stages}); "
                                  f"phase 1 has {S}. Raise tst.ratio or train.steps")]
        first, end = self.blend_window()
        return [(end - first >= 2 and first >= 0 and end <= N,
                 f"tst.transition=blend needs tst.transition_steps between 2 and {min(2 * S, 2 * (N - S))}: the blend "
                 f"window is centred on the switch (step {S} of {N}) and must fit inside the run; got {end - first}")]


SECTIONS = {f.name: f.default_factory for f in fields(Config)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise a ConfigError naming the field."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        hint = next(a for a in args if a is not type(None))
    allowed = choices_of(hint)
    if allowed is not None:
        if str(value) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        return str(value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            words = {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}
            return words[str(value).lower()]
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
        raise ConfigError(f"{key} must be a {hint.__name__}; got {value!r}") from None


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

    Used while a config is being built; a built one changes through ``Config.with_values``.
    """
    for key, value in _flatten(values).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; sections are {', '.join(SECTIONS)}")
        hints = _hints(SECTIONS[section])
        if name not in hints:
            raise ConfigError(f"unknown config field {key!r}; {section} has {', '.join(hints)}")
        setattr(getattr(cfg, section), name, _coerce(key, value, hints[name]))
    return cfg


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
        try:
            apply_overrides(cfg, tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML ({e})") from None
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
    """Raise ConfigError for the first value that cannot work, saying how to fix it."""
    for section in SECTIONS:
        part = getattr(cfg, section)
        for name, hint in _hints(type(part)).items():
            allowed = choices_of(hint)
            if allowed is not None and getattr(part, name) not in allowed:
                raise ConfigError(f"{section}.{name} must be one of {', '.join(allowed)}; got {getattr(part, name)!r}")
    # In this order, each list built only once the ones before it hold: the later ones derive the
    # schedule, which needs sane section values.
    checks = [lambda: [rule for section in SECTIONS for rule in getattr(cfg, section).rules()], cfg.rules,
              cfg.transition_rules]
    for rules in checks:
        for ok, message in rules():
            if not ok:
                raise ConfigError(message)


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
    """Return one entry per config field: ``key``, ``default``, ``type`` (a name), ``doc``, ``choices``."""
    out = []
    for section, cls in SECTIONS.items():
        hints = _hints(cls)
        for f in fields(cls):
            allowed = choices_of(hints[f.name])
            out.append({"key": f"{section}.{f.name}", "default": f.default, "doc": f.metadata.get("doc", ""),
                        "choices": allowed, "type": "choice" if allowed else hints[f.name].__name__})
    return out
