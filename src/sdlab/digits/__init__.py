"""The digits model: a complete Stable Diffusion in miniature, trained from scratch on handwritten digits."""
