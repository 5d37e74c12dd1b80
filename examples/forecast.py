"""Next-step forecasting of a noisy multi-frequency signal with a Mamba stack as a layer.

The model is ``Linear(1 -> d_model)``, a ``Mamba1``/``Mamba2`` stack (no embedding, no head: it maps
(B, L, d_model) to the same shape), and ``Linear(d_model -> 1)``, trained with the plain optimizer of
each backend to predict ``x[t + 1]`` from ``x[..t]``. Every series has its own random frequencies,
amplitudes and phases, so the model has to work them out from the context it has seen.

It then prints the held-out MSE next to the naive last-value forecast (``x[t + 1] ≈ x[t]``) and runs
the trained model in streaming mode, one frame at a time with ``stack.step`` and a ``MambaCache``
(what an online sensor or audio model does), checking that it gives the full forward's outputs.

Usage:
    python examples/forecast.py --backend torch
    python examples/forecast.py --backend mlx --arch mamba2 --steps 400 --d-model 64

``conformance/test_examples.py`` imports ``run`` and checks both backends on small sizes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mamba_core import Mamba1Config, Mamba2Config

WARMUP = 16  # positions scored only once the model has seen this much context


def make_signal(n_series: int, length: int, rng: np.random.Generator, *, n_freq: int = 3,
                noise: float = 0.1) -> np.ndarray:
    """(n_series, length) float32: sums of ``n_freq`` sines (random frequency, amplitude, phase)
    plus Gaussian noise of std ``noise``."""
    t = np.arange(length)[None, :, None]  # (1, L, 1)
    freq = rng.uniform(0.15, 0.6, (n_series, 1, n_freq))  # radians per step
    amp = rng.uniform(0.3, 1.0, (n_series, 1, n_freq))
    phase = rng.uniform(0.0, 2 * np.pi, (n_series, 1, n_freq))
    clean = (amp * np.sin(freq * t + phase)).sum(-1)  # (n_series, L)
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32)


def make_config(arch: str, d_model: int, n_layer: int):
    """A small stack config (``vocab_size`` is required by the config class but unused by a stack)."""
    if arch == "mamba1":
        return Mamba1Config(d_model=d_model, n_layer=n_layer, vocab_size=1, d_state=16)
    return Mamba2Config(d_model=d_model, n_layer=n_layer, vocab_size=1, d_state=16, headdim=16,
                        chunk_size=32)


def last_value_mse(series: np.ndarray) -> float:
    """MSE of predicting ``x[t + 1] = x[t]`` over the scored positions."""
    return float(np.mean((series[:, WARMUP:-1] - series[:, WARMUP + 1 :]) ** 2))


# ---- torch -------------------------------------------------------------------------------------


def _torch_parts(config, lr: float):
    import torch
    from torch import nn

    from mamba_core.backends.torch import Mamba1, Mamba2

    class Forecaster(nn.Module):
        """(B, L, 1) -> (B, L, 1): the prediction of the next value at every position."""

        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(1, config.d_model)
            self.stack = (Mamba1 if config.arch == "mamba1" else Mamba2)(config)
            self.out = nn.Linear(config.d_model, 1)

        def forward(self, x):
            return self.out(self.stack(self.inp(x)))

        def step(self, x_t, cache):  # (B, 1) -> (B, 1), one frame
            return self.out(self.stack.step(self.inp(x_t), cache))

    torch.manual_seed(0)
    model = Forecaster()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def train_step(x: np.ndarray) -> float:
        xt = torch.from_numpy(x)[..., None]  # (B, L, 1)
        pred = model(xt[:, :-1])
        loss = torch.mean((pred[:, WARMUP:] - xt[:, WARMUP + 1 :]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)[..., None])[..., 0].numpy()

    @torch.no_grad()
    def stream(x: np.ndarray) -> np.ndarray:
        cache = model.stack.make_cache(x.shape[0])
        xt = torch.from_numpy(x)
        return np.stack([model.step(xt[:, t, None], cache)[:, 0].numpy() for t in range(x.shape[1])], 1)

    return train_step, predict, stream


# ---- MLX ---------------------------------------------------------------------------------------


def _mlx_parts(config, lr: float):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mamba_core.backends.mlx import Mamba1, Mamba2

    class Forecaster(nn.Module):
        """(B, L, 1) -> (B, L, 1): the prediction of the next value at every position."""

        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(1, config.d_model)
            self.stack = (Mamba1 if config.arch == "mamba1" else Mamba2)(config)
            self.out = nn.Linear(config.d_model, 1)

        def __call__(self, x):
            return self.out(self.stack(self.inp(x)))

        def step(self, x_t, cache):  # (B, 1) -> (B, 1), one frame
            return self.out(self.stack.step(self.inp(x_t), cache))

    mx.random.seed(0)
    model = Forecaster()
    opt = optim.AdamW(learning_rate=lr, weight_decay=0.0)

    def loss_fn(m, x):
        pred = m(x[:, :-1])
        return mx.mean((pred[:, WARMUP:] - x[:, WARMUP + 1 :]) ** 2)

    grad_fn = nn.value_and_grad(model, loss_fn)

    def train_step(x: np.ndarray) -> float:
        loss, grads = grad_fn(model, mx.array(x)[..., None])
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        return loss.item()

    def predict(x: np.ndarray) -> np.ndarray:
        return np.array(model(mx.array(x)[..., None])[..., 0])

    def stream(x: np.ndarray) -> np.ndarray:
        cache = model.stack.make_cache(x.shape[0])
        xm = mx.array(x)
        outs = []
        for t in range(x.shape[1]):
            y = model.step(xm[:, t, None], cache)[:, 0]
            mx.eval(y, *cache.state)
            outs.append(np.array(y))
        return np.stack(outs, 1)

    return train_step, predict, stream


# ---- the experiment ----------------------------------------------------------------------------


def run(backend: str = "torch", *, arch: str = "mamba2", steps: int = 300, batch: int = 16,
        length: int = 96, d_model: int = 32, n_layer: int = 2, lr: float = 3e-3, seed: int = 0,
        stream_frames: int = 48, verbose: bool = True) -> dict:
    """Train, evaluate on held-out series, and compare streaming with the full forward.

    Args:
        backend: ``"torch"`` or ``"mlx"``.
        arch: ``"mamba1"`` or ``"mamba2"``.
        steps: optimizer steps, each on ``batch`` fresh series of ``length`` values.
        d_model, n_layer: stack size.
        lr: AdamW learning rate (constant).
        stream_frames: frames of the held-out set replayed one at a time.

    Returns:
        dict with ``mse`` (model, held out), ``baseline`` (last value, same positions), ``ratio``,
        ``stream_err`` (max |stream - forward| / max |forward|) and ``seconds``.

    Example:
        >>> r = run("torch", steps=5, verbose=False)   # doctest: +SKIP
    """
    config = make_config(arch, d_model, n_layer)
    parts = {"torch": _torch_parts, "mlx": _mlx_parts}
    if backend not in parts:
        raise ValueError(f"backend must be 'torch' or 'mlx', got {backend!r}")
    train_step, predict, stream = parts[backend](config, lr)
    rng = np.random.default_rng(seed)
    test = make_signal(64, length, np.random.default_rng(seed + 10_000))
    start = time.perf_counter()
    for i in range(steps):
        loss = train_step(make_signal(batch, length, rng))
        if verbose and (i % 50 == 0 or i == steps - 1):
            print(f"step {i:4d}  train mse {loss:.4f}")
    pred = predict(test[:, :-1])  # (N, L-1): prediction of test[:, 1:]
    mse = float(np.mean((pred[:, WARMUP:] - test[:, WARMUP + 1 :]) ** 2))
    baseline = last_value_mse(test)
    full = predict(test[:8, :stream_frames])
    streamed = stream(test[:8, :stream_frames])
    stream_err = float(np.max(np.abs(streamed - full)) / max(np.max(np.abs(full)), 1e-12))
    seconds = time.perf_counter() - start
    result = {"mse": mse, "baseline": baseline, "ratio": mse / baseline, "stream_err": stream_err,
              "seconds": seconds}
    if verbose:
        print(f"{backend}/{arch}: held-out MSE {mse:.4f} vs last-value baseline {baseline:.4f} "
              f"({mse / baseline:.2f}x); noise floor {0.1 ** 2:.4f}")
        print(f"streaming ({stream_frames} frames, step by step) vs full forward: rel err {stream_err:.2e}")
        print(f"{seconds:.1f} s")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    parser.add_argument("--arch", choices=("mamba1", "mamba2"), default="mamba2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (tiny shapes gain nothing from more)")
    args = parser.parse_args(argv)
    if args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    result = run(args.backend, arch=args.arch, steps=args.steps, batch=args.batch, length=args.length,
                 d_model=args.d_model, n_layer=args.n_layer, lr=args.lr, seed=args.seed)
    if result["stream_err"] > 1e-4:
        raise SystemExit(f"streaming differs from the full forward: {result['stream_err']:.2e}")


if __name__ == "__main__":
    main()
