"""`sdlab caption DIR`: write the captions a fine-tuning run trains on, with a captioning model.

Every captioner has one method, `caption(images) -> list[str]`:
- `digits`: sdlab's digits captioner (a classifier plus measured style), shipped with the digits model;
- `blip:PATH`: transformers' `BlipForConditionalGeneration` from a local folder (e.g. a download of
  Salesforce/blip-image-captioning-base), loaded offline, safetensors only unless pickles are allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import PIL.Image
import torch

from sdlab.datasets import METADATA, read_folder, write_metadata
from sdlab.errors import InputError
from sdlab.images import load_image


class Captioner(Protocol):
    name: str

    def caption(self, images: list[PIL.Image.Image]) -> list[str]: ...


class BlipCaptioner:
    name = "blip"

    def __init__(self, model, processor, max_new_tokens: int = 30) -> None:
        self.model, self.processor, self.max_new_tokens = model.eval(), processor, max_new_tokens

    @classmethod
    def load(cls, path: str | Path, *, allow_pickle: bool = False, device: str = "cpu") -> BlipCaptioner:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise InputError(f"blip:{path} is not a BLIP model folder (no config.json)")
        if not any(path.glob("*.safetensors")) and not allow_pickle:
            raise InputError(
                f"blip:{path} has no .safetensors weights; pass --allow-pickle to load pickle weights"
            )
        try:
            processor = BlipProcessor.from_pretrained(path, local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(
                path, local_files_only=True, use_safetensors=None if allow_pickle else True
            )
        except (OSError, ValueError) as err:
            raise InputError(f"cannot load the BLIP captioner in {path}: {str(err).splitlines()[0]}") from err
        return cls(model.to(device), processor)

    @torch.no_grad()
    def caption(self, images: list[PIL.Image.Image]) -> list[str]:
        inputs = self.processor(images=images, return_tensors="pt").to(self.model.device)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def load_captioner(spec: str, *, allow_pickle: bool = False) -> Captioner:
    """`digits` or `blip:PATH`."""
    if spec == "digits":
        from sdlab.digits.captioner import DigitsCaptioner
        from sdlab.loading import DEFAULT_MODEL

        return DigitsCaptioner.load(DEFAULT_MODEL / "captioner.safetensors")
    if spec.startswith("blip:") and len(spec) > 5:
        return BlipCaptioner.load(spec[5:], allow_pickle=allow_pickle)
    raise InputError(f"unknown captioner {spec!r}; use digits or blip:PATH (a local BLIP model folder)")


def caption_folder(
    folder: str | Path,
    captioner: Captioner,
    *,
    sidecars: bool = False,
    overwrite: bool = False,
    batch_size: int = 16,
) -> dict[Path, str]:
    """Caption every image in `folder`; writes metadata.jsonl (and .txt sidecars) and returns the captions."""
    folder = Path(folder)
    if (folder / METADATA).exists() and not overwrite:
        raise InputError(f"{folder / METADATA} already exists; pass --overwrite to replace its captions")
    paths = [item.path for item in read_folder(folder, require_captions=False, metadata=False)]
    captions: dict[Path, str] = {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        texts = captioner.caption([load_image(p) for p in chunk])
        captions.update(zip(chunk, texts, strict=True))
    write_metadata(folder, captions, sidecars=sidecars)
    return captions


def describe(captions: dict[Path, str], limit: int = 5) -> str:
    lines = [json.dumps({"file_name": p.name, "text": t}) for p, t in list(captions.items())[:limit]]
    more = len(captions) - limit
    return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))
