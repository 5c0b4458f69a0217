"""A fast stand-in for diffusers' HiDreamImagePipeline with the same call shape: a step loop that
calls `callback_on_step_end(pipe, step, timestep, tensors)` with the step's `latents` (as HiDream's
loop does: batch x 4 channels x 1/8 of the size) and stops once `pipe._interrupt` is set, returning
`.images` as PIL images; `vae` is a small real diffusers AutoencoderKL, so the worker fits and makes
its previews exactly as on a real pipeline. Tests script its next calls: fail, hang, or hold."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

Behaviour = Literal["normal", "fail", "fatal", "hang", "hold"]


@dataclass(frozen=True)
class Output:
    images: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    n: int
    steps_run: int
    interrupted: bool


class StandInPipeline:
    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self._interrupt = False
        self._plan: deque[Behaviour] = deque()
        self.calls: list[Call] = []
        self.release = threading.Event()  # ends a "hold"
        self.holding = threading.Event()  # set while a "hold" or "hang" call is in its loop
        self.output_size: tuple[int, int] | None = None  # force a wrong size
        self._vae: object | None = None

    @property
    def vae(self) -> object:
        """Built on first use (a preview asked for): most tests never need diffusers imported."""
        if self._vae is None:
            from diffusers import AutoencoderKL

            torch.manual_seed(0)
            self._vae = AutoencoderKL(scaling_factor=0.3611, shift_factor=0.1159).eval()
        return self._vae

    def plan(self, behaviour: Behaviour, count: int = 1) -> None:
        if behaviour == "hold":
            self.release.clear()
        self._plan.extend([behaviour] * count)

    def __call__(self, **kw: object) -> Output:
        self._interrupt = False
        behaviour = self._plan.popleft() if self._plan else "normal"
        if behaviour == "fail":
            raise RuntimeError("stand-in pipeline failure")
        if behaviour == "fatal":  # what torch raises when the CUDA context is poisoned
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        steps = _int(kw["num_inference_steps"])
        callback = kw.get("callback_on_step_end")
        blocked: Callable[[], bool] = {
            "normal": lambda: False,
            "hang": lambda: True,
            "hold": lambda: not self.release.is_set(),
            "fail": lambda: False,
            "fatal": lambda: False,
        }[behaviour]
        if behaviour in ("hang", "hold"):
            self.holding.set()
        n = _int(kw["num_images_per_prompt"])
        side = (max(1, _int(kw["height"]) // 8), max(1, _int(kw["width"]) // 8))
        noise = torch.randn((n, 4, *side), generator=torch.Generator().manual_seed(0))
        picture = torch.linspace(-1.0, 1.0, side[1]).expand(n, 4, *side)
        step = 0
        try:
            while (step < steps or blocked()) and not self._interrupt:
                time.sleep(self.step_s if behaviour == "normal" else 0.002)
                if callable(callback):
                    done = min(1.0, (step + 1) / max(1, steps))
                    callback(self, step, 1000 - step, _Latents(noise, picture, done))
                step += 1
        finally:
            self.holding.clear()
        width, height = self.output_size or (_int(kw["width"]), _int(kw["height"]))
        generator = kw["generator"]
        assert isinstance(generator, torch.Generator)
        images = []
        for _ in range(n):
            rgb = torch.randint(0, 256, (3,), generator=generator).tolist()
            images.append(Image.new("RGB", (width, height), (rgb[0], rgb[1], rgb[2])))
        negative = kw.get("negative_prompt")
        self.calls.append(
            Call(
                prompt=str(kw["prompt"]),
                negative_prompt=negative if isinstance(negative, str) else None,
                width=_int(kw["width"]),
                height=_int(kw["height"]),
                steps=steps,
                guidance_scale=float(str(kw["guidance_scale"])),
                n=n,
                steps_run=step,
                interrupted=self._interrupt,
            )
        )
        return Output(images)


class _Latents(dict[str, object]):
    """The callback's tensors, with `latents` made only when read (at a preview's step): torch on
    a loaded 2-core machine took ~20 ms a step to make them for every step."""

    def __init__(self, noise: torch.Tensor, picture: torch.Tensor, done: float) -> None:
        super().__init__()
        self._parts = (noise, picture, done)

    def __missing__(self, key: str) -> object:
        if key != "latents":
            raise KeyError(key)
        noise, picture, done = self._parts
        return noise * (1 - done) + picture * done


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value
