"""The digits model's architecture: SD's four components, sized for a 2-core CPU.

FLOPs are the budget. A UNet step costs about (pixels of its input) x (channels)^2, so the UNet works
on 8x8x4 latents (a 32x32 image through a VAE with factor 4) rather than on 32x32 pixels: at the same
width that is 16x fewer positions. Cross-attention sits at 8x8 and 4x4, where it is cheap; the 2x2
level is plain convolution. The text encoder is a 64-wide CLIP text transformer over the real CLIP
vocabulary, trained jointly with the UNet (as the LDM paper trained its text transformer from scratch).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

# Stable Diffusion's own noise schedule: the digits model trains on exactly SD 1.x's betas.
SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


@dataclass
class DigitsArchitecture:
    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32, 32)  # 3 levels: factor 4, 32x32 -> 8x8 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    attention_head_dim: int = 8
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4

    def vae(self) -> AutoencoderKL:
        n = len(self.vae_channels)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=self.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            layers_per_block=1,
            latent_channels=self.latent_channels,
            norm_num_groups=min(16, self.vae_channels[0]),
            sample_size=self.image_size,
        )

    def unet(self) -> UNet2DConditionModel:
        n = len(self.unet_channels)
        return UNet2DConditionModel(
            sample_size=self.image_size // 2 ** (len(self.vae_channels) - 1),
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            block_out_channels=self.unet_channels,
            layers_per_block=self.unet_layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=self.text_width,
            attention_head_dim=self.attention_head_dim,
            norm_num_groups=min(32, self.unet_channels[0]),
        )

    def text_encoder(self) -> CLIPTextModel:
        return CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=self.text_width,
                intermediate_size=4 * self.text_width,
                num_hidden_layers=self.text_layers,
                num_attention_heads=self.text_heads,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
