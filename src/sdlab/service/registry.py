"""Models, LoRAs and embeddings by *name*, from the folders people already keep them in.

A registry scans configured folders (AUTOMATIC1111's layout: `models/Stable-diffusion`,
`models/Lora`, `embeddings`) and names what it finds; a request names a model, LoRA or embedding
and never gives a path. Entries whose real path leaves their folder (a symlink pointing elsewhere)
are not listed, so `../`, absolute paths and escaping links match nothing. The CLI makes a registry
with `allow_paths=True`, where a name that is not listed is taken as a path on this machine.

Models are loaded on first use and kept, most recently used first, up to `cache_size` at once.
The shipped digits model is always there, as `digits`.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlab.errors import InputError
from sdlab.loading import DEFAULT_MODEL, load_pipeline, resolve_device, resolve_dtype
from sdlab.loading.checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, weights_bytes
from sdlab.pipeline import Pipeline

DIGITS = "digits"
# AUTOMATIC1111's folders under its data directory (its --data-dir)
A1111_FOLDERS = {
    "ckpt": "models/Stable-diffusion", "lora": "models/Lora", "embeddings": "embeddings", "upscalers": "models/ESRGAN",
}  # fmt: skip


@dataclass(frozen=True)
class ModelEntry:
    """A model the registry can load. `name` is its path inside its folder, as A1111 names checkpoints
    (`sd15/v1-5-pruned-emaonly.safetensors`; a diffusers folder's name is the folder's)."""

    name: str
    path: Path

    @property
    def model_name(self) -> str:
        """A1111's `model_name`: the name without its extension, folders joined by '_'."""
        stem = self.name.removesuffix(Path(self.name).suffix) if self.path.is_file() else self.name
        return stem.replace("/", "_")


logger = logging.getLogger(__name__)


class ModelRegistry:
    """Named models (loaded lazily, LRU-cached), LoRAs and embeddings from folders.

    `device`/`dtype`/`allow_pickle`/`config`/`parts` are passed to `sdlab.load_pipeline`. `cache_size` models
    at most stay loaded, and no more than `cache_bytes` of weights (default: `default_cache_bytes`). Loading happens on
    the caller's thread; `pipeline()` is safe to call from several threads (one loads at a time).
    Raises `InputError` for a folder that does not exist and for a name nothing matches.
    """

    def __init__(
        self,
        ckpt_dirs: Iterable[str | Path] = (),
        lora_dirs: Iterable[str | Path] = (),
        embedding_dirs: Iterable[str | Path] = (),
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_size: int = 1,
        allow_paths: bool = False,
        allow_pickle: bool = False,
        config: str | None = None,
        compile: bool = False,
        parts: dict[str, str | None] | None = None,
        cache_bytes: int | None = None,
        parts_where_they_fit: bool = False,
        upscaler_dirs: Iterable[str | Path] = (),
    ) -> None:
        if not isinstance(cache_size, int) or cache_size < 1:
            raise InputError(f"the model cache must hold at least 1 model, got {cache_size!r}")
        self.cache_bytes = cache_bytes if cache_bytes is not None else default_cache_bytes(device)
        self.ckpt_dirs = _folders(ckpt_dirs, "checkpoint")
        self.lora_dirs = _folders(lora_dirs, "LoRA")
        self.embedding_dirs = _folders(embedding_dirs, "embeddings")
        self.upscaler_dirs = _folders(upscaler_dirs, "upscaler")
        self.load_kwargs = {
            "device": device, "dtype": dtype, "allow_pickle": allow_pickle, "config": config, "compile": compile,
            **(parts or {}),
        }  # fmt: skip
        self.cache_size = cache_size
        self.parts_where_they_fit = parts_where_they_fit  # serve's --vae: models it does not fit keep theirs
        self.options: dict[str, Any] = {}  # A1111 generation options set for every request (POST /options)
        self.allow_paths = allow_paths
        self.allow_pickle = allow_pickle
        self.current = DIGITS
        self._cache: OrderedDict[str, Pipeline] = OrderedDict()
        self._decoders: dict[tuple[str, str, str], Any] = {}
        self._upscaler: tuple[Path, Any] | None = None  # the last upscaler model used, kept loaded
        self._load_lock = threading.Lock()
        self.refresh()

    @classmethod
    def from_a1111(cls, data_dir: str | Path, **kwargs) -> ModelRegistry:
        """The folders of an AUTOMATIC1111 install (its `--data-dir`): those of them that exist."""
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise InputError(f"data folder {root} does not exist")
        found = {key: [root / sub] if (root / sub).is_dir() else [] for key, sub in A1111_FOLDERS.items()}
        return cls(
            found["ckpt"], found["lora"], found["embeddings"], upscaler_dirs=found["upscalers"], **kwargs
        )

    # -- listing

    def refresh(self) -> None:
        """Scan the folders again (A1111's "refresh checkpoints"); loaded models stay loaded."""
        suffixes = SAFETENSORS_SUFFIXES + (PICKLE_SUFFIXES if self.allow_pickle else ())
        models = {DIGITS: ModelEntry(DIGITS, DEFAULT_MODEL)}
        for folder in self.ckpt_dirs:
            for name, path in _scan(folder, suffixes, diffusers_folders=True).items():
                models.setdefault(name, ModelEntry(name, path))
        self._models = models
        self._loras = _by_stem(_scan(folder, suffixes) for folder in self.lora_dirs)
        self._lora_aliases = _aliases(self._loras)
        self._embeddings = _by_stem(_scan(folder, suffixes) for folder in self.embedding_dirs)
        self._upscalers = _by_stem(_scan(folder, suffixes) for folder in self.upscaler_dirs)

    def models(self) -> list[ModelEntry]:
        return list(self._models.values())

    def loras(self) -> dict[str, Path]:
        return dict(self._loras)

    def lora_alias(self, name: str) -> str:
        """The LoRA's alias as A1111 lists it: the `ss_output_name` its trainer wrote, else its name."""
        return next((alias for alias, owner in self._lora_aliases.items() if owner == name), name)

    def embeddings(self) -> dict[str, Path]:
        return dict(self._embeddings)

    def cached(self, name: str) -> Pipeline | None:
        """The model called `name` if it is in memory, else None (nothing is loaded)."""
        return self._cache.get(name)

    def loaded(self) -> list[str]:
        """Names of the models in memory, most recently used last."""
        return list(self._cache)

    # -- finding by name

    def find_model(self, ref: str | None = None) -> ModelEntry:
        """The model called `ref` (its name, A1111 model_name or title "name [hash]"); None: the current one."""
        ref = self.current if ref is None else ref
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(f"a model name must be non-empty text, got {ref!r}")
        wanted = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", ref.strip())
        for entry in self._models.values():
            if wanted in (entry.name, entry.model_name):
                return entry
        if self.allow_paths:
            return ModelEntry(str(Path(ref).expanduser().resolve()), Path(ref).expanduser())
        raise InputError(f"unknown model {ref!r}; known models: {', '.join(self._models)}")

    def vae_decoder(self, ref: str, pipe: Pipeline) -> Any:
        """The tiny decoder `ref` on `pipe`'s device, loaded once: `tiny` (the model's own, see
        `vae_decoder_folder`), or a path where paths are allowed; `InputError` if it cannot decode
        `pipe`'s latents."""
        from sdlab.loading.decoder import TINY, check_decoder_fits, load_vae_decoder, vae_decoder_folder

        if ref != TINY and not self.allow_paths:
            raise InputError(
                "vae_decoder takes 'tiny' (the model's own tiny decoder) or a folder path, which this server "
                "does not accept from requests"
            )
        folder = vae_decoder_folder(ref, pipe.source)
        key = (str(folder.resolve()), str(pipe.device), str(pipe.dtype))
        if key not in self._decoders:
            self._decoders = {key: load_vae_decoder(folder, pipe.device, pipe.dtype)}  # the last one only
        decoder = self._decoders[key]
        check_decoder_fits(decoder, pipe.vae.config.latent_channels, pipe.vae_scale_factor, ref)
        return decoder

    def find_lora(self, ref: str) -> Path:
        """A LoRA by its name (the file's stem) or its alias (`ss_output_name`), as A1111 finds prompt tags."""
        if ref not in self._loras and ref in self._lora_aliases:
            return self._loras[self._lora_aliases[ref]]
        return self._find(ref, self._loras, "LoRA", "--lora-dir")

    def upscalers(self) -> dict[str, Path]:
        """Upscaler model files (ESRGAN family) by name: the folders' files, A1111's models/ESRGAN."""
        return dict(self._upscalers)

    def upscaler(self, ref: str, device: Any = "cpu") -> Any:
        """The upscaler model `ref` (a name, or a path where paths are allowed) as a function image -> image
        (`sdlab.sampling.hires.load_upscaler`), the last one kept loaded; `InputError` as `load_upscaler`."""
        from sdlab.sampling.hires import BUILT_IN_UPSCALERS, load_upscaler

        path = self._upscalers.get(ref)
        if path is None and self.allow_paths and Path(ref).expanduser().is_file():
            path = Path(ref).expanduser()
        if path is None:
            models = (
                ", ".join(self._upscalers) or "none (no folder was given with --upscaler-dir, or it is empty)"
            )
            raise InputError(
                f"unknown hr_upscaler {ref!r}; built in: {', '.join(BUILT_IN_UPSCALERS)}; models: {models}"
            )
        if self._upscaler is None or self._upscaler[0] != path:
            self._upscaler = (path, load_upscaler(path, allow_pickle=self.allow_pickle, device=device))
        return self._upscaler[1]

    def public(self, message: str) -> str:
        """`message` without this machine's paths, for a server's answers: a file in one of the registry's
        folders is named as requests name it (its path inside the folder), and the working directory, the
        home folder and the temporary folder are left out; no absolute path of those remains."""
        import tempfile

        roots = [*self.ckpt_dirs, *self.lora_dirs, *self.embedding_dirs, *self.upscaler_dirs]
        roots += [Path.cwd(), Path.home(), Path(tempfile.gettempdir())]
        for root in sorted(
            {str(r.resolve()) for r in roots} | {str(r) for r in roots}, key=len, reverse=True
        ):
            if root.rstrip("/"):  # a working directory of "/" (a service, a container) is no prefix to drop
                message = message.replace(root.rstrip("/") + "/", "")
        return message

    def find_embedding(self, ref: str) -> Path:
        return self._find(ref, self._embeddings, "embedding", "--embeddings-dir")

    def embeddings_in(self, texts: Iterable[str]) -> list[str]:
        """Names of the folder embeddings that a prompt mentions as a word, in any case (A1111 matches the
        name's CLIP tokens, and CLIP's tokenizer lower-cases), longest names first."""
        text = "\n".join(texts)
        names = sorted(self._embeddings, key=len, reverse=True)
        return [name for name in names if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE)]

    def _find(self, ref: str, known: dict[str, Path], what: str, flag: str) -> Path:
        if ref in known:
            return known[ref]
        if self.allow_paths:
            return Path(ref).expanduser()
        names = ", ".join(known) or f"none (no {what} folder was given with {flag}, or it is empty)"
        raise InputError(f"unknown {what} {ref!r}; known: {names}")

    # -- loading

    def set_current(self, ref: str) -> ModelEntry:
        """Make `ref` the model used when a request names none (A1111's `sd_model_checkpoint` option)."""
        entry = self.find_model(ref)
        self.current = entry.name
        return entry

    @property
    def compile(self) -> bool:
        """Whether models are compiled when loaded (`Pipeline.compile`); compiled ones stay cached, so each
        shape compiles once per server, not once per request."""
        return self.load_kwargs["compile"]

    @compile.setter
    def compile(self, value: bool) -> None:
        with self._load_lock:
            if value != self.load_kwargs["compile"]:
                self._cache.clear()  # loaded again, compiled or not, on their next use
            self.load_kwargs["compile"] = value

    def pipeline(self, entry: ModelEntry) -> Pipeline:
        """The loaded model of `entry`, loading it if needed. Before a load, the least recently used models
        are evicted until the cache holds fewer than `cache_size` models and the new one's weights (from its
        files' headers, at the dtype it loads in) fit beside the rest in `cache_bytes`: an SDXL counts as
        the 7 GB (float16) or 14 GB (float32) it takes, not as one model like the digits' 11 MB."""
        with self._load_lock:
            if entry.name in self._cache:
                self._cache.move_to_end(entry.name)
                return self._cache[entry.name]
            needed = weights_bytes(entry.path, self._dtype())
            while self._cache and (
                len(self._cache) >= self.cache_size or self.cached_bytes() + needed > self.cache_bytes
            ):
                self._cache.popitem(last=False)  # free memory before loading the next one
            gc.collect()  # the evicted weights go now, not at the collector's leisure
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                pipe = load_pipeline(entry.path, **self.load_kwargs)
            except InputError as err:  # `serve --vae` for every model: those it does not fit keep their own
                if not (
                    self.parts_where_they_fit and self.load_kwargs.get("vae") and str(err).startswith("--vae")
                ):
                    raise
                logger.warning("%s; %s decodes with its own VAE", err, entry.name)
                pipe = load_pipeline(entry.path, **{**self.load_kwargs, "vae": None})
            self._cache[entry.name] = pipe
            return pipe

    def cached_bytes(self) -> int:
        """Bytes the cached models' weights take."""
        return sum(pipe.nbytes for pipe in self._cache.values())

    def _dtype(self) -> torch.dtype:
        return resolve_dtype(self.load_kwargs["dtype"], resolve_device(self.load_kwargs["device"]))


def default_cache_bytes(device: str = "auto") -> int:
    """70% of the memory models load into: the GPU's where models run on one, else the machine's RAM."""
    where = resolve_device(device)
    if where.type == "cuda":
        return int(0.7 * torch.cuda.get_device_properties(where).total_memory)
    import psutil

    return int(0.7 * psutil.virtual_memory().total)


def _folders(folders: Iterable[str | Path], what: str) -> list[Path]:
    paths = [Path(f).expanduser() for f in folders]
    for path in paths:
        if not path.is_dir():
            raise InputError(f"{what} folder {path} does not exist")
    return paths


def _scan(root: Path, suffixes: tuple[str, ...], *, diffusers_folders: bool = False) -> dict[str, Path]:
    """Files with `suffixes` (and diffusers model folders) under `root`, by POSIX path relative to it.

    Hidden entries are skipped, links are not followed into other folders, and anything whose real
    path is outside `root` is left out.
    """
    real_root = root.resolve()
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if diffusers_folders:
            for d in list(dirnames):
                if (here / d / "model_index.json").is_file():
                    dirnames.remove(d)  # a model, not a folder of models
                    if _inside(here / d, real_root):
                        found[(here / d).relative_to(root).as_posix()] = here / d
        for f in sorted(filenames):
            path = here / f
            if not f.startswith(".") and path.suffix.lower() in suffixes and _inside(path, real_root):
                if path.is_file() and path.stat().st_size == 0:
                    continue  # an empty file is nothing (A1111 skips them too)
                found[path.relative_to(root).as_posix()] = path
    return found


def _aliases(loras: dict[str, Path]) -> dict[str, str]:
    """{alias: name} from each LoRA's `ss_output_name` (kohya's trainers write it), as A1111's Lora
    extension reads aliases: one that is another LoRA's name, or that two files share, is left out."""
    from sdlab.loading.checkpoint import safetensors_metadata

    found: dict[str, list[str]] = {}
    for name, path in loras.items():
        alias = safetensors_metadata(path).get("ss_output_name")
        if isinstance(alias, str) and alias.strip() and alias != name:
            found.setdefault(alias, []).append(name)
    return {alias: names[0] for alias, names in found.items() if len(names) == 1 and alias not in loras}


def _inside(path: Path, real_root: Path) -> bool:
    return path.resolve().is_relative_to(real_root)


def _by_stem(scans: Iterable[dict[str, Path]]) -> dict[str, Path]:
    """LoRAs and embeddings are named by file stem, as A1111 names them; a repeated stem keeps its folder."""
    named: dict[str, Path] = {}
    for scan in scans:
        for relative, path in scan.items():
            name = path.stem if path.stem not in named else relative.removesuffix(path.suffix)
            named.setdefault(name, path)
    return named
