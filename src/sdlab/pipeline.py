"""`Pipeline`: the Stable Diffusion components held together, and nothing else.

A pipeline is data: the text encoder(s) and tokenizer(s), the VAE, the UNet, and the scheduler config
the model was trained with. Sampling lives in `sdlab.sampling`, loading in `sdlab.loading`.

Families, as the UNet and encoders say (`family`):
    sd1            one CLIP text encoder (ViT-L, 768 wide, in SD 1.5; QuickGELU), 512 px
    sd2            one OpenCLIP text encoder (ViT-H, 1024 wide; exact GELU), 512 or 768 px
    sdxl           CLIP ViT-L and OpenCLIP ViT-bigG with projection (`text_encoder_2`), the UNet also
                   conditioned on bigG's pooled embedding and on sizes ("text_time"), 1024 px
    sdxl-refiner   bigG only (`text_encoder` None), conditioned on an aesthetic score instead of a target size
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sdlab.sampling.params import SamplingParams

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdlab.sampling.loop import GenerationResult


@dataclass
class Pipeline:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None  # None only for the SDXL refiner
    tokenizer: CLIPTokenizer | None
    scheduler_config: dict[str, Any]
    source: str = ""  # the path it was loaded from
    name: str = ""  # a short name for metadata (A1111's "Model:")
    # the model's recommended sampling package (its folder's sdlab.json), applied where a call gives none
    recommended: SamplingParams = field(default_factory=lambda: SamplingParams())
    compiled: str | None = None  # how `compile` compiled the UNet and VAE decoder ("inductor", ...), or None
    # SDXL: the second text encoder (OpenCLIP bigG with its projection) and its tokenizer (pads with "!")
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    # SDXL: an empty negative prompt is all zeros, embeddings and pooled (diffusers' model_index flag; A1111
    # does the same for SDXL). Refiners were trained without it.
    force_zeros_for_empty_prompt: bool = True
    _hash: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def is_sdxl(self) -> bool:
        """SDXL base, inpainting or refiner: a UNet with the pooled-text and size conditioning ("text_time")."""
        return self.unet.config.get("addition_embed_type") == "text_time"

    @property
    def requires_aesthetics_score(self) -> bool:
        """The SDXL refiner: its size conditioning ends with an aesthetic score, not a target size."""
        return self.is_sdxl and self.text_encoder is None

    @property
    def family(self) -> str:
        """ "sd1", "sd2", "sdxl" or "sdxl-refiner" (see the module docstring)."""
        if self.is_sdxl:
            return "sdxl-refiner" if self.requires_aesthetics_score else "sdxl"
        return "sd2" if self.text_encoder.config.hidden_act == "gelu" else "sd1"  # OpenCLIP: exact GELU

    @property
    def text_encoders(self) -> list[tuple[CLIPTokenizer, CLIPTextModel]]:
        """(tokenizer, encoder) of each text encoder the model has, in the order their embeddings are
        concatenated: one for SD 1.x/2.x and the refiner, two for SDXL."""
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]

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
        for module in self.modules():
            module.to(**kwargs)
        return self

    def modules(self) -> list[torch.nn.Module]:
        """The networks: UNet, VAE and each text encoder."""
        return [self.unet, self.vae, *(encoder for _, encoder in self.text_encoders)]

    @property
    def nbytes(self) -> int:
        """Bytes its networks' weights take, as saved (an SDXL in float32: about 13.9 GB)."""
        tensors = (t for m in self.modules() for t in m.state_dict().values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def compile(self, *, cuda_graphs: bool = False, backend: str | None = None) -> Pipeline:
        """Compile the UNet and the VAE decoder in place with `torch.compile`, and return self.

        Each new input shape (batch, size; a guidance interval makes two batch sizes) compiles once, on
        its first call, and is reused after: seconds to minutes at first (74 s for an SD 1.5 UNet on a
        2-core CPU), then faster steps. `cuda_graphs` also captures CUDA graphs ("reduce-overhead"), which
        pays on a GPU where shapes repeat. Pixels stay within float16 rounding of the eager model's, not
        equal: `compiled` is recorded in every image's recipe, and replay compiles too. With a deep cache,
        the UNet's full passes run eager (the cache reads a layer inside them); the decoder stays compiled.
        `backend` is torch.compile's (default `$SDLAB_COMPILE_BACKEND`, else "inductor"; "eager" only
        captures the graphs, which checks in seconds that a model compiles).
        """
        backend = backend or os.environ.get("SDLAB_COMPILE_BACKEND", "inductor")
        mode = "reduce-overhead" if cuda_graphs else None
        self.unet.compile(backend=backend, mode=mode)
        self.vae.decoder.compile(backend=backend, mode=mode)
        self.compiled = backend + ("+cudagraphs" if cuda_graphs else "")
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
