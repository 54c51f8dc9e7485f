"""`Pipeline`: the four Stable Diffusion components held together, and nothing else.

A pipeline is data: the text encoder and its tokenizer, the VAE, the UNet, and the scheduler config
the model was trained with. Sampling lives in `sdlab.sampling`, loading in `sdlab.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sdlab.sampling.params import SamplingParams

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from sdlab.sampling.loop import GenerationResult


@dataclass
class Pipeline:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    source: str = ""  # the path it was loaded from
    name: str = ""  # a short name for metadata (A1111's "Model:")
    # the model's recommended sampling package (its folder's sdlab.json), applied where a call gives none
    recommended: SamplingParams = field(default_factory=lambda: SamplingParams())
    _hash: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def is_inpainting_unet(self) -> bool:
        """True for the 9-channel UNets trained for inpainting (latents + mask + masked-image latents)."""
        return self.unet.config.in_channels == 9

    @property
    def default_size(self) -> int:
        """The image side the UNet was trained at, in pixels."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Pipeline:
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(**kwargs)
        return self

    def model_hash(self) -> str:
        """A1111's "Model hash": the first 10 hex digits of the weights' sha256 (see `loading.hashing`)."""
        if self._hash is None:
            from sdlab.loading.hashing import model_hash

            self._hash = model_hash(self.source) if self.source else "0000000000"
        return self._hash

    def generate(
        self, prompt: str | list[str] = "", negative_prompt: str | list[str] | None = None, **kwargs: Any
    ) -> GenerationResult:
        """Shortcut for `sdlab.sampling.loop.generate(self, prompt, negative_prompt, **kwargs)`."""
        from sdlab.sampling.loop import generate

        return generate(self, prompt, negative_prompt, **kwargs)
