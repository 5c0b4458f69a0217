"""Partial images: which denoising steps a job previews, and how a step's latents become a picture.

A preview is a linear map from the latent channels to RGB, fitted once per pipeline against its
own VAE (least squares over decodes of random latents): a matmul per preview, no VAE call inside
the denoising loop, and it fits any VAE whatever its channel count (4 in tiny mode, 16 in
HiDream's Flux VAE). The picture is at latent resolution (1/8 of the output on HiDream, 128x128
for 1 MP); the gateway scales it to the asked size. bench/previews.py measured it against a VAE
decode at half size (the figures are in the commit that chose it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

# Random latents decoded to fit the map: enough pixels for 4-16 channels plus a bias many times over.
_FIT_BATCH = 4
_FIT_SIDE = 16


def preview_steps(steps: int, partial_images: int) -> tuple[int, ...]:
    """The steps (1-based count of steps done) after which a job sends a preview: `partial_images`
    evenly spaced before the last (which is the finished image). Fewer when the job has fewer
    steps than that (a 1-step job has none)."""
    if partial_images <= 0 or steps <= 1:
        return ()
    picked = {min(steps - 1, max(1, round(steps * (i + 1) / (partial_images + 1)))) for i in range(partial_images)}
    return tuple(sorted(picked))


@dataclass(frozen=True, slots=True)
class LatentRgb:
    """rgb = latents . weights + bias, per latent pixel, in [-1, 1]."""

    weights: Any  # torch.Tensor, (channels, 3)
    bias: Any  # torch.Tensor, (3,)

    @classmethod
    def fit(cls, vae: Any, channels: int, seed: int = 0) -> LatentRgb:
        """Least squares from the pipeline's latent space (what the denoising loop holds, before the
        pipeline unscales it for the VAE) to the VAE's decode, averaged down to latent resolution."""
        import torch

        generator = torch.Generator(device="cpu").manual_seed(seed)
        param = next(vae.parameters())
        latents = torch.randn((_FIT_BATCH, channels, _FIT_SIDE, _FIT_SIDE), generator=generator)
        with torch.no_grad():
            unscaled = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            decoded = vae.decode(unscaled.to(param.device, param.dtype), return_dict=False)[0].float().cpu()
        factor = decoded.shape[-1] // _FIT_SIDE
        if factor > 1:
            decoded = torch.nn.functional.avg_pool2d(decoded, factor)
        x = latents.permute(0, 2, 3, 1).reshape(-1, channels)
        x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
        y = decoded.permute(0, 2, 3, 1).reshape(-1, 3)
        solution = torch.linalg.lstsq(x, y).solution  # (channels + 1, 3)
        return cls(solution[:channels], solution[channels])

    def images(self, latents: Any) -> list[Image.Image]:
        """One picture per latent of the batch (B, C, h, w), at h x w pixels."""
        import torch

        with torch.no_grad():
            x = latents.detach().float().cpu().permute(0, 2, 3, 1)  # B, h, w, C
            rgb = (x @ self.weights + self.bias).clamp(-1.0, 1.0)
            pixels = ((rgb + 1.0) * 127.5).round().to(torch.uint8).numpy()
        return [Image.fromarray(p, mode="RGB") for p in pixels]


def vae_preview(vae: Any, latents: Any, shrink: int = 2) -> list[Image.Image]:
    """The alternative measured in bench/previews.py: the VAE's own decode of the latents averaged
    down by `shrink` (a picture 1/shrink of the output's side)."""
    import torch

    param = next(vae.parameters())
    with torch.no_grad():
        small = torch.nn.functional.avg_pool2d(latents.float(), shrink) if shrink > 1 else latents.float()
        unscaled = small / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        decoded = vae.decode(unscaled.to(param.device, param.dtype), return_dict=False)[0].float().cpu()
        pixels = ((decoded.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p, mode="RGB") for p in pixels]


class Previewer:
    """The latent-to-RGB map of one pipeline, fitted on first use (a VAE decode of ~0.2 s on a CPU
    in tiny mode), then shared by every job. Used only by the inference thread: no lock needed."""

    def __init__(self, pipeline: object) -> None:
        self._pipeline = pipeline
        self._map: LatentRgb | None = None

    def images(self, latents: Any) -> list[Image.Image]:
        if self._map is None:
            vae = getattr(self._pipeline, "vae", None)
            if vae is None:
                raise TypeError("the pipeline has no VAE to fit previews against")
            self._map = LatentRgb.fit(vae, int(latents.shape[1]))
        return self._map.images(latents)
