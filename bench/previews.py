"""How a preview is made: a latent-to-RGB linear map (worker/previews.py) against a VAE decode at
half size, on the tiny CPU pipeline, both timed against the full VAE decode and one denoising step
measured in the same run, and compared with the full decode (PSNR, higher is closer).

    .venv/bin/python -m bench.previews [--steps 12] [--sample-size 32] [--repeat 20]

The latents are the pipeline's own, caught after the middle step of a real generation.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image


def _timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB").resize(a.size, Image.Resampling.BOX), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    from worker.previews import LatentRgb, vae_preview
    from worker.settings import WorkerSettings
    from worker.tiny import build_tiny_pipeline

    args = argparse.ArgumentParser()
    args.add_argument("--steps", type=int, default=12)
    args.add_argument("--sample-size", type=int, default=32)
    args.add_argument("--repeat", type=int, default=20)
    opts = args.parse_args(argv)
    settings = WorkerSettings(tiny=True, weights_dir=None)
    pipe: Any = build_tiny_pipeline(settings.spec, opts.sample_size)
    caught: dict[int, Any] = {}
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(_: object, step: int, __: object, tensors: dict[str, Any]) -> dict[str, Any]:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        caught[step] = tensors["latents"].clone()
        return {}

    pipe(prompt="a red fox in snow", height=1024, width=1024, num_inference_steps=opts.steps, guidance_scale=5.0,
         num_images_per_prompt=1, generator=torch.Generator().manual_seed(1), callback_on_step_end=on_step,
         callback_on_step_end_tensor_inputs=["latents"], output_type="pil")  # fmt: skip
    latents = caught[opts.steps // 2]
    vae = pipe.vae
    fit_s = _timed(lambda: LatentRgb.fit(vae, int(latents.shape[1])), 3)
    linear = LatentRgb.fit(vae, int(latents.shape[1]))
    full = vae_preview(vae, latents, shrink=1)[0]
    full_s = _timed(lambda: vae_preview(vae, latents, shrink=1), opts.repeat)
    half_s = _timed(lambda: vae_preview(vae, latents, shrink=2), opts.repeat)
    linear_s = _timed(lambda: linear.images(latents), opts.repeat)
    step_s = sorted(step_times[1:])[len(step_times[1:]) // 2]
    rows = [
        ("vae decode, full size", full_s, math.inf),
        ("vae decode, half size", half_s, _psnr(vae_preview(vae, latents, shrink=2)[0], full)),
        ("linear latent->rgb", linear_s, _psnr(linear.images(latents)[0], full)),
    ]
    shape = tuple(latents.shape)
    print(f"tiny pipeline: latents {shape}, output {full.size}, one denoising step {step_s * 1e3:.1f} ms")
    print(f"linear map fit (once per pipeline): {fit_s * 1e3:.1f} ms")
    print(f"{'preview':24} {'ms':>8} {'x full decode':>14} {'x one step':>11} {'PSNR vs full dB':>16}")
    for name, seconds, psnr in rows:
        print(f"{name:24} {seconds * 1e3:8.2f} {seconds / full_s:14.3f} {seconds / step_s:11.3f} {psnr:16.1f}")


if __name__ == "__main__":
    main()
