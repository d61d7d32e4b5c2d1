"""Training FLOPs of any model, counted by ``torch.utils.flop_counter.FlopCounterMode``, kept out of
the processes that cannot afford it.

``FlopCounterMode`` counts what torch actually runs (matmuls, convolutions of any grouping, attention)
for one forward and backward pass, whatever the model is built from. Its first use imports torch's
compiler stack (sympy, dynamo): measured here at +91 MiB resident and about 2 s, which a
Raspberry-Pi-class client must not carry for a number it needs once. So :func:`train_flops_per_sample`

1. returns a cached count: in memory, then in a JSON file under ``$KOALA_CACHE_DIR`` (default
   ``$XDG_CACHE_HOME/koala-async`` or ``~/.cache/koala-async``), keyed by a fingerprint of the
   architecture (``repr`` of the built model, its class, the input shape, torch's version);
2. otherwise counts in this process when the compiler stack is already loaded (servers and tools
   that used ``torch.optim``), or when told to (``in_process=True``);
3. otherwise counts in a short child process (``python -m koala_async.learning.flops``, about 4 s)
   and caches the result. A file lock makes concurrent clients on one machine count once.

The count is per sample: one batch of :data:`FLOPS_BATCH` divided by its size (matmul and convolution
FLOPs are linear in the batch). Element-wise work (activations, norms, pooling) is not counted, as in
``FlopCounterMode``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from koala_async.learning.models import InputSpec

FLOPS_BATCH = 4
_memory: dict[str, float] = {}


def _conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: object,
                        _stride: object, _padding: object, _dilation: object, transposed: bool,
                        _output_padding: object, _groups: int, output_mask: list[bool], *args: object,
                        **kwargs: object) -> int:
    """A convolution's backward: the input gradient and the weight gradient each cost one forward.

    torch 2.13's own formula counts the weight gradient of a grouped convolution ``groups`` times over
    (a depthwise 3x3 over 32 channels as 32 full ones; fixed upstream in pytorch/pytorch#183405), which
    would make MobileNets look several times dearer than they are to train."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_train_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass of ``model`` on batch ``x``, in this process."""
    from torch.utils.flop_counter import FlopCounterMode  # the first use loads sympy and dynamo

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    was_training = model.training
    model.train()
    try:
        with counter, torch.enable_grad():
            model(x).float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return int(counter.get_total_flops())


def fingerprint(model: nn.Module, spec: InputSpec) -> str:
    """A key that changes with the architecture, the input spec, the batch and torch's version."""
    text = "|".join(("flops-v1", f"{type(model).__module__}.{type(model).__qualname__}", repr(model), repr(spec.shape),
                     str(spec.num_classes), str(FLOPS_BATCH), torch.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path() -> Path:
    root = os.environ.get("KOALA_CACHE_DIR")
    if root:
        return Path(root) / "flops.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "koala-async" / "flops.json"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def _write_cache(path: Path, new: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_cache(path), **new}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    except OSError:
        pass  # a read-only home: the count is only slower next time


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock next to the cache (POSIX; elsewhere, no lock)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()  # releases the lock


def _count_here(names: Sequence[str], spec: InputSpec) -> dict[str, float]:
    from koala_async.learning.models import build_model

    out = {}
    for name in names:
        model = build_model(name, spec, seed=0)
        x = torch.randn(FLOPS_BATCH, *spec.shape, generator=torch.Generator().manual_seed(0))
        out[name] = count_train_flops(model, x) / FLOPS_BATCH
    return out


def _count_in_child(names: Sequence[str], spec: InputSpec) -> dict[str, float]:
    args = [sys.executable, "-m", "koala_async.learning.flops", spec.kind, ",".join(map(str, spec.shape)),
            str(spec.num_classes), *names]
    # the child sees this process's import path, so import-string models resolve the same way
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"counting FLOPs of {list(names)} in a child process failed:\n{done.stderr[-2000:]}")
    return {k: float(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def train_flops_per_sample(models: dict[str, nn.Module], spec: InputSpec,
                           in_process: bool | None = None) -> dict[str, float]:
    """Training FLOPs per sample of each named, already built model (cached; see the module doc).

    ``in_process``: True counts here, False always in a child; None (default) counts here only when
    torch's compiler stack is already loaded.
    """
    keys = {name: fingerprint(model, spec) for name, model in models.items()}
    result = {name: _memory[key] for name, key in keys.items() if key in _memory}
    if len(result) < len(keys):
        path = cache_path()
        with _locked(path):
            disk = _read_cache(path)
            result.update({name: disk[key] for name, key in keys.items() if key in disk and name not in result})
            todo = [name for name in keys if name not in result]
            if todo:
                here = in_process if in_process is not None else "torch._dynamo" in sys.modules
                if here:
                    counted = {n: count_train_flops(models[n], torch.randn(FLOPS_BATCH, *spec.shape)) / FLOPS_BATCH
                               for n in todo}
                else:
                    counted = _count_in_child(todo, spec)
                result.update(counted)
                _write_cache(path, {keys[n]: counted[n] for n in todo})
    _memory.update({keys[name]: flops for name, flops in result.items()})
    return {name: result[name] for name in models}


def _main(argv: list[str]) -> int:
    """``python -m koala_async.learning.flops KIND C,H,W CLASSES NAME...``: print {name: flops} as JSON."""
    torch.set_num_threads(1)
    kind, shape, classes, *names = argv
    spec = InputSpec(kind, tuple(int(v) for v in shape.split(",")), int(classes))
    print(json.dumps(_count_here(names, spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
