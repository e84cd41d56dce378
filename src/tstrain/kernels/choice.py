"""Which fused head + multi-hot CE runs on a device: the Triton kernel once it has passed a self-check there.

On a CUDA device ``auto`` (the default) runs the Triton kernel only after a quick self-check on
that device has passed: the kernel and the chunked PyTorch path (the reference, handed in by
``superposition``) on small inputs, fp32 and bf16, s = 1 and 4, ignored targets, a vocabulary that
is no whole number of the kernel's tiles, loss and both gradients compared. The verdict is kept for
the process and in the user's cache dir (``$XDG_CACHE_HOME/tstrain``, else ``~/.cache/tstrain``),
keyed by the device, torch, CUDA, triton and the kernel's own source, so a new version or a changed
kernel is checked afresh; ``tstrain doctor`` checks again and rewrites it. Otherwise the chunked
path runs, and says why once (a warning). ``TSTRAIN_LOSS_KERNEL=triton|chunked`` forces a path.

Torch and the standard library only: triton is imported when the kernel is loaded, never here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

KERNEL_ENV = "TSTRAIN_LOSS_KERNEL"
FORCED = ("auto", "triton", "chunked")
CACHE_FILE = "loss-kernel.json"
# The self-check's tolerances, (loss, each gradient of its largest magnitude), relative: both paths take the same
# logits and a float32 softmax, so their losses agree closely; their gradients are rounded to the dtype (bf16: 8
# bits) before the products. A wrong kernel misses by far more.
CHECK_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-3, 2e-2)}


@dataclasses.dataclass(frozen=True)
class Choice:
    """The path the fused loss takes on a device (``"triton"`` or ``"chunked"``) and why; the trainer names its
    ``"unfused"`` loss in the same form."""

    path: str
    reason: str

    def __str__(self) -> str:
        """Return ``path (reason)``: how the trainer's start line and ``tstrain doctor`` name a path and why."""
        return f"{self.path} ({self.reason})"


def cache_dir() -> Path:
    """Return the user's cache dir for tstrain: ``$XDG_CACHE_HOME/tstrain``, else ``~/.cache/tstrain``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tstrain"


def forced_path() -> str:
    """Return ``TSTRAIN_LOSS_KERNEL`` (``auto`` when unset), refusing any other value with the fix."""
    raw = os.environ.get(KERNEL_ENV, "")
    value = raw.strip().lower() or "auto"
    if value not in FORCED:
        raise ValueError(f"{KERNEL_ENV}={raw!r} is not a loss path: set it to auto, triton or chunked, or unset it")
    return value


@functools.cache  # the superposition asks on every fused loss call on CUDA: one import attempt a process
def load_triton() -> tuple[object | None, str]:
    """Return ``(the Triton autograd Function, "")``, or ``(None, why it cannot load)``."""
    try:
        from .triton_mce import TritonLinearMultiHotCE
    except ImportError as e:  # no triton (or a broken one): the chunked PyTorch path serves
        return None, f"triton does not import ({e})"
    return TritonLinearMultiHotCE, ""


def _kernel_source_hash() -> str:
    return hashlib.sha256((Path(__file__).parent / "triton_mce.py").read_bytes()).hexdigest()[:12]


def device_identity(device: torch.device) -> str | None:
    """Return what a verdict is kept under: the CUDA device, torch, CUDA, triton and the kernel's source;
    None where the Triton kernel cannot run (any device but CUDA)."""
    if device.type != "cuda":
        return None
    return _cuda_identity(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_identity(index: int) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        triton_version = version("triton")
    except PackageNotFoundError:
        triton_version = "none"
    p = torch.cuda.get_device_properties(index)
    return (f"{p.name} sm_{p.major}{p.minor}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
            f"triton {triton_version}; kernel {_kernel_source_hash()}")


def _check_case(device: torch.device, dtype: torch.dtype, s: int, seed: int):
    """Return ``(hidden, weight, safe_targets, scales)`` of one self-check case: ignored targets, V = 1000."""
    g = torch.Generator().manual_seed(seed)
    N, V, d = 48, 1000, 32
    hidden = torch.randn(N, d, generator=g)
    weight = torch.randn(V, d, generator=g) * 0.5
    targets = torch.randint(0, V, (N, s), generator=g)
    valid = torch.rand(N, s, generator=g) >= 0.2
    valid[3] = False  # a position with no target at all
    scales = valid / valid.sum(dim=0).clamp(min=1) / s  # uniform bag weights, a mean over each slot's targets
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    return hidden.to(device, dtype), weight.to(device, dtype), safe.to(device), scales.to(device, torch.float32)


def _run(fn, hidden, weight, safe, scales, chunk: int) -> list[torch.Tensor]:
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn.apply(h, w, safe, scales, chunk)
    loss.backward()
    return [loss.detach().float(), h.grad.float(), w.grad.float()]


def self_check(device: torch.device, kernel, reference) -> str:
    """Run ``kernel`` and ``reference`` (autograd Functions with the chunked path's ``apply``) on small inputs
    on ``device``; return ``""`` when loss and gradients agree, else what differed."""
    problems = []
    with torch.autocast(device.type, enabled=False), torch.enable_grad():
        for dtype, (loss_tol, grad_tol) in CHECK_TOLERANCE.items():
            for s in (1, 4):
                case = _check_case(device, dtype, s, seed=s)
                got, want = _run(kernel, *case, chunk=20), _run(reference, *case, chunk=20)
                for name, a, b, tol in zip(("loss", "hidden gradient", "head gradient"), got, want,
                                           (loss_tol, grad_tol, grad_tol)):
                    err = ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()
                    if not err <= tol:  # also a NaN
                        problems.append(f"{str(dtype).removeprefix('torch.')} s={s}: {name} off by {err:.2g} "
                                        f"of its scale (allowed {tol:g})")
    return "; ".join(problems)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A self-check's outcome on one device: passed, what differed (or why it failed), when, how long."""

    passed: bool
    detail: str
    checked_at: str
    seconds: float


class KernelChooser:
    """Chooses the fused loss's path per device, running and keeping the Triton kernel's self-check.

    Its seams are the pieces a test fakes on a machine without a GPU: ``identify(device)`` (what a
    verdict is kept under, None where the kernel cannot run), ``load()`` (the kernel, or why not),
    ``check(device, kernel, reference)`` (``""`` when it agrees with the reference), ``cache``
    (the dir of the verdicts file; None: the user's cache dir) and ``say`` (how the chunked path
    is announced: a warning).
    """

    def __init__(self, *, identify: Callable = device_identity, load: Callable = load_triton,
                 check: Callable = self_check, cache: Path | None = None, say: Callable[[str], None] | None = None):
        self.identify, self.load, self.check, self.cache = identify, load, check, cache
        self.say = say or (lambda text: warnings.warn(text, RuntimeWarning, stacklevel=4))
        self.verdicts: dict[str, Verdict] = {}  # this process's, by identity
        self._said: set[str] = set()

    def cache_file(self) -> Path:
        return (self.cache if self.cache is not None else cache_dir()) / CACHE_FILE

    @torch.compiler.disable  # decided eagerly (a compiled loss calls it too): never traced, the self-check included
    def choose(self, device: torch.device | str, reference, refresh: bool = False) -> Choice:
        """Return the path the fused loss takes on ``device``; ``refresh`` runs the self-check again."""
        device = torch.device(device)
        forced = forced_path()
        identity = self.identify(device)
        if identity is None:
            return Choice("chunked", f"the Triton kernel runs on CUDA devices only; this is {device.type}")
        if forced == "chunked":
            return Choice("chunked", f"{KERNEL_ENV}=chunked")
        kernel, why = self.load()
        if kernel is None:
            if forced == "triton":
                raise RuntimeError(f"{KERNEL_ENV}=triton, but the Triton kernel cannot load: {why}; "
                                   "install triton or unset the variable")
            return self._announce(device, Choice("chunked", why))
        if forced == "triton":
            return Choice("triton", f"{KERNEL_ENV}=triton (forced, self-check skipped)")
        verdict = self.verdict(identity, device, kernel, reference, refresh)
        if verdict.passed:
            return Choice("triton", f"passed its self-check on this device ({verdict.checked_at})")
        return self._announce(device, Choice("chunked", f"the Triton kernel failed its self-check on this device "
                                                        f"({verdict.detail})"))

    @torch.compiler.disable
    def kernel(self, device: torch.device, reference):
        """Return the Triton kernel where ``choose`` picks it on ``device``, else None (the chunked path)."""
        return self.load()[0] if self.choose(device, reference).path == "triton" else None

    def _announce(self, device: torch.device, choice: Choice) -> Choice:
        if choice.reason not in self._said:  # once per process and reason
            self._said.add(choice.reason)
            self.say(f"tstrain: the fused loss runs the chunked PyTorch path on {device}: {choice.reason}")
        return choice

    def verdict(self, identity: str, device: torch.device, kernel, reference, refresh: bool = False) -> Verdict:
        """Return the self-check's verdict for ``identity``: this process's, the cache's, or a fresh one."""
        if not refresh and identity in self.verdicts:
            return self.verdicts[identity]
        saved = None if refresh else self._read().get(identity)
        if isinstance(saved, dict):
            try:
                self.verdicts[identity] = Verdict(**saved)
                return self.verdicts[identity]
            except TypeError:  # a verdict of another layout: check again
                pass
        start = time.perf_counter()
        try:
            detail = self.check(device, kernel, reference)
        except Exception as e:  # a kernel that does not compile or run here fails its check, it does not stop training
            detail = f"{type(e).__name__}: {e}"
        verdict = Verdict(not detail, detail, time.strftime("%Y-%m-%d %H:%M:%S"), round(time.perf_counter() - start, 4))
        self.verdicts[identity] = verdict
        self._write(identity, verdict)
        return verdict

    def _read(self) -> dict:
        try:
            saved = json.loads(self.cache_file().read_text())
        except (OSError, ValueError):
            return {}
        verdicts = saved.get("verdicts") if isinstance(saved, dict) else None
        return verdicts if isinstance(verdicts, dict) else {}

    def _write(self, identity: str, verdict: Verdict) -> None:
        """Add ``verdict`` to the cache file (atomically); an unwritable cache dir keeps it in this process only."""
        path = self.cache_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            verdicts = {**self._read(), identity: dataclasses.asdict(verdict)}
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".loss-kernel-", delete=False) as f:
                json.dump({"version": 1, "verdicts": verdicts}, f, indent=2)
            os.replace(f.name, path)
        except OSError:
            pass


CHOOSER = KernelChooser()  # the process's: ``superposition`` asks it on every fused loss call on CUDA
