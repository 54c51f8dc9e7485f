"""`sdlab generate` and `sdlab replay`: thin shells over the request layer (`sdlab.service`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdlab.cli.options import GenerateOptions, ModelOptions, NetworkOptions, ReplayOptions
from sdlab.errors import InputError
from sdlab.images import load_image
from sdlab.loading import load_pipeline, resolve_device
from sdlab.lora import parse_lora_spec
from sdlab.outputs import check_output, read_recipe, write_pngs
from sdlab.pipeline import Pipeline
from sdlab.service import GenerationRequest, LoraRef, ModelRegistry, RequestResult, run_request


def load_model(opts: ModelOptions) -> Pipeline:
    return load_pipeline(
        opts.model, device=opts.device, dtype=opts.dtype, allow_pickle=opts.allow_pickle, config=opts.config,
        compile=getattr(opts, "compile", False),  # generate, replay and eval have --compile; info does not
        vae=opts.vae, text_encoder=opts.text_encoder, text_encoder_2=opts.text_encoder_2,
    )  # fmt: skip


def cli_registry(opts: NetworkOptions) -> ModelRegistry:
    """The CLI's registry: files are named by their paths; LoRA and embedding folders are optional."""
    return ModelRegistry(
        lora_dirs=[opts.lora_dir] if opts.lora_dir else [],
        embedding_dirs=[opts.embeddings_dir] if opts.embeddings_dir else [],
        device=opts.device,
        dtype=opts.dtype,
        allow_paths=True,
        allow_pickle=opts.allow_pickle,
        config=opts.config,
        compile=opts.compile,
        parts={"vae": opts.vae, "text_encoder": opts.text_encoder, "text_encoder_2": opts.text_encoder_2},
    )


def run_generate(opts: GenerateOptions) -> list[Path]:
    output = Path(opts.output) if opts.output else _next_output()
    check_output(output)
    if opts.prompt is None and not opts.from_file:
        raise InputError('give a prompt ("" for none), or --from-file FILE with one prompt per line')
    if opts.prompt is not None and opts.from_file:
        raise InputError("give a prompt or --from-file FILE, not both (the file's lines are the prompts)")
    request = GenerationRequest(
        **{f.name: getattr(opts, f.name) for f in dataclasses.fields(GenerationRequest)},
    ).replace(prompt=opts.prompt or "", loras=parse_loras(opts.lora), embeddings=_split(opts.embedding))
    if opts.from_file:
        return run_prompts_file(opts, request, output)
    result = run_with_progress(cli_registry(opts), request)
    written = _write(result.images, output)
    for path in written:
        print(path)
    return written


def process_state(opts):
    """accelerate's state for a command split across processes (`accelerate launch`), and the options with
    one device per process where there are GPUs and the device is `auto` (gloo between CPU processes)."""
    from accelerate import PartialState

    from sdlab.loading import resolve_device

    state = PartialState(cpu=resolve_device(opts.device).type == "cpu")
    if state.num_processes > 1 and opts.device == "auto":
        opts = dataclasses.replace(opts, device=str(state.device))
    return state, opts


def run_prompts_file(opts: GenerateOptions, request: GenerationRequest, output: Path) -> list[Path]:
    """Every line of `--from-file`, image K of the file written to OUTPUT-K.png.

    Under `accelerate launch --num_processes N` each process takes a contiguous share of the lines
    (accelerate's `split_between_processes`); seeds and file names depend on the file alone, so the
    union of the processes' outputs equals a one-process run, pixel for pixel."""
    import random

    from accelerate.utils import broadcast_object_list

    from sdlab.sampling.params import MAX_SEED
    from sdlab.service.prompts_file import read_prompts_file

    state, opts = process_state(opts)
    # the base seed and the output name are chosen once, on the main process, and shared
    shared = [
        request.seed if request.seed is not None else random.SystemRandom().randrange(MAX_SEED // 2),
        output,
    ]
    if state.num_processes > 1:
        broadcast_object_list(shared)
    base_seed, output = shared
    jobs = read_prompts_file(opts.from_file, request, base_seed)
    registry = cli_registry(opts)
    written = []
    with state.split_between_processes(jobs) as mine:
        for job in mine:
            result = run_with_progress(registry, job.request)
            for k, image in enumerate(result.images):
                target = output.with_name(f"{output.stem}-{job.first + k}.png")
                written += _write([image], target)
    for path in written:
        print(path)
    state.wait_for_everyone()
    return written


def run_replay(opts: ReplayOptions) -> Path:
    output = Path(opts.output or Path(opts.image).with_name(Path(opts.image).stem + "-replay.png"))
    check_output(output)
    recipe = read_recipe(opts.image)
    model = opts.model or recipe.get("model")
    if not model:
        raise InputError(
            f"{opts.image} does not say which model made it; pass --model PATH (--model digits: the shipped one)"
        )
    for key in ("init_image", "mask_image"):
        if key in recipe and not Path(recipe[key]).exists():
            raise InputError(
                f"{opts.image} was made from {key.replace('_', ' ')} {recipe[key]}, which no longer exists"
            )
    if recipe.get("strength") is not None and "init_image" not in recipe:
        raise InputError(f"{opts.image} is an image-to-image result, but its recipe names no init image file")
    # what `auto` chose where the image was made (float16: a GPU's); sdlab images from before the dtype
    # was recorded were float32 on a CPU, where `auto` may now mean bfloat16
    made = recipe.get("dtype")
    if made is None and "sdlab_version" in recipe and resolve_device(opts.device).type == "cpu":
        made = "float32"
    if opts.dtype == "auto" and made in ("float32", "bfloat16"):
        opts = dataclasses.replace(opts, dtype=made)
    if recipe.get("compile"):  # compiled kernels round differently from eager ones: compile again
        opts = dataclasses.replace(opts, compile=True)
    index = recipe.get("batch_index", 0)
    # batched convolutions may differ from a lone image's in the last float bit, which can flip an
    # 8-bit rounding: replay regenerates the whole batch to give identical pixels
    request = GenerationRequest.from_recipe(recipe).replace(
        model=model,
        seed=recipe["seed"] - index,
        num_images_per_prompt=recipe.get("batch_size", 1),
        loras=parse_loras(recipe.get("lora")),
        embeddings=_split(recipe.get("embedding")),
    )
    image = run_with_progress(cli_registry(opts), request).images[index]
    (path,) = _write([image], output)
    original = np.asarray(load_image(opts.image), dtype=np.int16)
    replayed = np.asarray(image.image, dtype=np.int16)
    if original.shape != replayed.shape:
        print(f"{path}: size differs from {opts.image}")
    else:
        diff = np.abs(original - replayed).max()
        print(
            f"{path}: {'identical pixels' if diff == 0 else f'max pixel difference {diff}'} to {opts.image}"
        )
    return path


def run_with_progress(registry: ModelRegistry, request: GenerationRequest) -> RequestResult:
    """`run_request` with a tqdm bar, opened at the first step so that bad input prints only its error."""
    bars: list[tqdm] = []

    def on_step(batch: int, step: int, total: int, latents) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="denoising", unit="step", leave=False))
        bars[0].update(1)

    try:
        return run_request(registry, request, on_step=on_step)
    finally:
        for bar in bars:
            bar.close()


def _write(images: list, output: Path) -> list[Path]:
    """Generated images (with their recipes and infotexts) as PNGs at `output` (see `write_pngs`)."""
    return write_pngs(
        [g.image for g in images], [g.recipe for g in images], output, [g.infotext for g in images]
    )


def parse_loras(specs: str | None) -> tuple[LoraRef, ...]:
    """ "FILE[:WEIGHT],FILE[:WEIGHT]" (the CLI's --lora, and a recipe's "lora") -> LoraRefs."""
    return tuple(LoraRef(*parse_lora_spec(spec)) for spec in _split(specs))


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _next_output(folder: Path = Path("outputs")) -> Path:
    """outputs/00001.png, 00002.png, ...: a default output never overwrites an earlier one."""
    taken = [int(p.stem.split("-")[0]) for p in folder.glob("*.png") if p.stem.split("-")[0].isdigit()]
    return folder / f"{max(taken, default=0) + 1:05d}.png"
