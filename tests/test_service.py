"""The request layer: extra networks for one request, the registry, PNG bytes, the worker, previews."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_lora

from sdlab.embeddings import save_embedding
from sdlab.errors import InputError
from sdlab.images import read_png_text
from sdlab.service import GenerationRequest, LoraRef, ModelRegistry, run_request
from sdlab.service.preview import LatentPreview
from sdlab.service.worker import QueueFull, Worker

FAST = dict(num_inference_steps=3, height=32, width=32, seed=7)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny, tiny_dir):
    """An A1111-style data folder: the tiny model, a LoRA, a 3-vector embedding."""
    root = tmp_path_factory.mktemp("a1111")
    shutil.copytree(tiny_dir, root / "models" / "Stable-diffusion" / "tiny")
    make_lora(tiny, root / "models" / "Lora" / "style.safetensors")
    (root / "embeddings").mkdir()
    save_embedding(root / "embeddings" / "t3x.safetensors", "t3x", torch.randn(3, 32), a1111=True)
    return root


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(g.image) for g in result.images])


def test_extra_networks_apply_for_one_request_only(folders):
    registry = ModelRegistry.from_a1111(folders)
    plain = GenerationRequest("a cat", model="tiny", **FAST)
    before = pixels(run_request(registry, plain))
    pipe = registry.pipeline(registry.find_model("tiny"))
    vocab = len(pipe.tokenizer)

    with_lora = run_request(registry, plain.replace(prompt="a cat <lora:style:1>"))
    with_embedding = run_request(registry, plain.replace(prompt="a t3x cat"))
    after = pixels(run_request(registry, plain))

    assert not np.array_equal(pixels(with_lora), before)
    assert not np.array_equal(pixels(with_embedding), before)
    assert np.array_equal(after, before)
    assert len(pipe.tokenizer) == vocab and pipe.text_encoder.get_input_embeddings().weight.shape[0] == vocab
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    # and the same pixels as a freshly loaded model that never saw a network
    fresh = ModelRegistry.from_a1111(folders)
    assert np.array_equal(pixels(run_request(fresh, plain)), before)
    # the recipe keeps the tag in the prompt, so replay applies the LoRA again
    assert with_lora.images[0].recipe["prompt"] == "a cat <lora:style:1>"


def test_a_prompt_tag_equals_the_explicit_lora_at_its_weight(folders):
    registry = ModelRegistry.from_a1111(folders, allow_paths=True)
    tagged = run_request(registry, GenerationRequest("a cat <lora:style:0.5>", model="tiny", **FAST))
    path = str(folders / "models" / "Lora" / "style.safetensors")
    explicit = run_request(
        registry, GenerationRequest("a cat", model="tiny", loras=(LoraRef(path, 0.5),), **FAST)
    )
    full = run_request(registry, GenerationRequest("a cat <lora:style>", model="tiny", **FAST))
    assert np.array_equal(pixels(tagged), pixels(explicit))
    assert not np.array_equal(pixels(tagged), pixels(full))


def test_a_lora_is_found_by_its_alias_as_a1111_finds_it(folders, tmp_path, tiny):
    """Issue 21: `<lora:tachie separation:0.7>` names a file by the `ss_output_name` kohya wrote into it
    (A1111 inserts LoRAs by that alias); an alias that is another file's name, or that two files share,
    is not one (A1111's forbidden aliases)."""
    from safetensors.torch import load_file, save_file

    root = tmp_path / "a1111"
    shutil.copytree(folders, root)
    loras = root / "models" / "Lora"
    tensors = load_file(loras / "style.safetensors")
    save_file(tensors, str(loras / "tachie_v2.safetensors"), metadata={"ss_output_name": "tachie separation"})
    save_file(tensors, str(loras / "other.safetensors"), metadata={"ss_output_name": "style"})
    registry = ModelRegistry.from_a1111(root)
    assert registry.find_lora("tachie separation") == loras / "tachie_v2.safetensors"
    assert registry.lora_alias("tachie_v2") == "tachie separation" and registry.lora_alias("other") == "other"
    assert registry.find_lora("style") == loras / "style.safetensors"  # a name wins over an alias
    by_alias = run_request(
        registry, GenerationRequest(prompt="a cat <lora:tachie separation:0.7>", model="tiny", **FAST)
    )
    by_name = run_request(registry, GenerationRequest(prompt="a cat <lora:style:0.7>", model="tiny", **FAST))
    assert np.array_equal(pixels(by_alias), pixels(by_name))


def test_a_failed_request_leaves_the_model_as_it_was(folders, tmp_path):
    registry = ModelRegistry.from_a1111(folders)
    plain = GenerationRequest("a cat", model="tiny", **FAST)
    before = pixels(run_request(registry, plain))
    init = tmp_path / "init.png"
    PIL.Image.new("RGB", (32, 32), "gray").save(init)
    failing = plain.replace(prompt="a t3x cat <lora:style>", init_image=init, strength=0.1)
    with pytest.raises(InputError, match="steps x strength"):  # raised inside generate, networks applied
        run_request(registry, failing)
    assert np.array_equal(pixels(run_request(registry, plain)), before)


def test_registry_names_a1111_folders_and_refuses_what_leaves_them(folders, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(folders / "models" / "Lora" / "style.safetensors", outside)
    link = folders / "models" / "Lora" / "escape.safetensors"
    link.symlink_to(outside)
    try:
        registry = ModelRegistry.from_a1111(folders)
        assert [m.name for m in registry.models()] == ["digits", "tiny"]
        assert list(registry.loras()) == ["style"] and list(registry.embeddings()) == ["t3x"]
        for bad in ("../tiny", str(folders / "models" / "Stable-diffusion" / "tiny"), "/etc/passwd"):
            with pytest.raises(InputError, match="unknown model"):
                registry.find_model(bad)
        for bad in ("escape", "../Lora/style", str(outside)):
            with pytest.raises(InputError, match="unknown LoRA"):
                registry.find_lora(bad)
        assert registry.find_model("tiny [0123456789]").name == "tiny"  # A1111 titles carry the hash
    finally:
        link.unlink()


def test_the_model_cache_keeps_the_most_recent_n(folders):
    registry = ModelRegistry.from_a1111(folders, cache_size=1)
    first = registry.pipeline(registry.find_model("tiny"))
    registry.pipeline(registry.find_model("digits"))
    assert registry.loaded() == ["digits"]
    registry.cache_size = 2
    registry.pipeline(registry.find_model("tiny"))
    again = registry.pipeline(registry.find_model("digits"))
    assert registry.loaded() == ["tiny", "digits"] and again is registry.cached("digits")
    assert registry.cached("tiny") is not first  # it was evicted and loaded anew


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_model_cache_is_bounded_by_the_weights_memory_too(folders, tiny_sdxl_dir, tmp_path, dtype):
    """Issue 20: an SDXL counts as its size. The estimate read from the files' headers is the loaded
    weights' size, at the dtype they load in; a model that does not fit beside the others evicts them."""
    from sdlab.loading.checkpoint import weights_bytes
    from sdlab.loading.export import save_single_file

    root = tmp_path / "models"
    shutil.copytree(tiny_sdxl_dir, root / "tiny-xl")
    shutil.copytree(folders / "models" / "Stable-diffusion" / "tiny", root / "tiny")
    registry = ModelRegistry([root], cache_size=3, device="cpu", dtype=dtype)
    xl = registry.pipeline(registry.find_model("tiny-xl"))
    sd = registry.pipeline(registry.find_model("tiny"))
    assert registry.loaded() == ["tiny-xl", "tiny"]
    assert weights_bytes(root / "tiny-xl", getattr(torch, dtype)) == xl.nbytes > 2 * sd.nbytes
    save_single_file(xl, root / "tiny-xl.safetensors", dtype=torch.float16)  # a float16 file loaded as dtype
    assert weights_bytes(root / "tiny-xl.safetensors", getattr(torch, dtype)) == xl.nbytes
    registry.cache_bytes = xl.nbytes + sd.nbytes - 1  # both do not fit: the least recently used goes
    registry.cache_size, registry._cache = 3, type(registry._cache)()
    registry.pipeline(registry.find_model("tiny-xl"))
    registry.pipeline(registry.find_model("tiny"))
    assert registry.loaded() == ["tiny"]
    registry.cache_bytes += 1
    registry.pipeline(registry.find_model("tiny-xl"))
    assert registry.loaded() == ["tiny", "tiny-xl"]


def test_results_are_png_bytes_with_parameters_and_recipe(folders):
    registry = ModelRegistry.from_a1111(folders)
    image = run_request(registry, GenerationRequest("a cat", model="tiny", **FAST)).images[0]
    data = image.png()
    chunks = read_png_text(data)
    assert chunks["parameters"] == image.infotext and "Seed: 7" in chunks["parameters"]
    assert '"model": "tiny"' in chunks["sdlab"]
    assert str(folders) not in chunks["sdlab"]  # names, not the server's paths


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(seed=2**32), "seed must be an integer from 0 to 4294967295"),
        (dict(seed=2**32 - 1, num_images_per_prompt=2), "passes the largest seed"),
        (dict(batch_count=0), "batch_count must be an integer from 1"),
        (dict(mask_image="m.png"), "a mask needs an init image"),
        (dict(scheduler="k_euler"), "unknown scheduler"),
        (dict(prompt="a <lora:style:strong> cat"), "the weight after the name must be a number"),
        (dict(mask_blur=-1), "mask_blur must be from 0 to 64"),
        (dict(num_images_per_prompt=64, batch_count=5), "320 images in one request is more than 256"),
    ],
)
def test_bad_requests_fail_before_anything_loads(change, message):
    with pytest.raises(InputError, match=message):
        GenerationRequest(**{"prompt": "a cat", **change}).validate()


def test_worker_interrupts_within_one_step_skips_a_batch_and_survives_failures(folders):
    registry = ModelRegistry.from_a1111(folders)
    worker = Worker(registry, max_queue=2)
    long = GenerationRequest("a cat", model="tiny", num_inference_steps=400, height=64, width=64, seed=1)

    def signal_after(steps: int, action) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 60
            while worker.progress().sampling_step < steps and time.monotonic() < deadline:
                time.sleep(0.002)
            action()

        threading.Thread(target=watch, daemon=True).start()

    signal_after(3, worker.interrupt)
    result = worker.run(long.replace(batch_count=3), timeout=120)
    record = result.extra["interrupted"]
    assert record["stopped_at_step"] - record["received_at_step"] <= 1
    assert len(result.images) == 1 and result.images[0].recipe["stopped_at_step"] < 400  # no further batch

    signal_after(3, worker.skip)
    result = worker.run(long.replace(batch_count=2, num_inference_steps=20), timeout=120)
    assert len(result.images) == 2
    assert (
        result.images[0].recipe["stopped_at_step"] < 20 and "stopped_at_step" not in result.images[1].recipe
    )

    with pytest.raises(InputError, match="unknown model"):
        worker.run(GenerationRequest("a cat", model="nope"), timeout=60)
    with pytest.raises(RuntimeError, match="boom"):
        worker.run(lambda w: (_ for _ in ()).throw(RuntimeError("boom")), timeout=60)
    assert worker.run(GenerationRequest("a cat", model="tiny", **FAST), timeout=60).images  # still serving

    gate = threading.Event()
    running = worker.submit(lambda w: gate.wait(30))
    time.sleep(0.2)  # the gate job is running; two more fill the queue of 2
    abandoned = worker.submit(GenerationRequest("a cat", model="tiny", **FAST))
    filler = worker.submit(lambda w: None)
    with pytest.raises(QueueFull, match="the queue is full"):
        worker.submit(lambda w: None)
    assert not running.cancel() and abandoned.cancel()  # a client that leaves cancels only a waiting job
    gate.set()
    filler.result(timeout=30)
    assert worker.run(GenerationRequest("a cat", model="tiny", **FAST), timeout=60).images  # still serving
    worker.close(timeout=30)


def test_the_cheap_preview_follows_the_decoded_image():
    registry = ModelRegistry()
    pipe = registry.pipeline(registry.find_model("digits"))
    result = run_request(registry, GenerationRequest("a handwritten digit 8", num_inference_steps=10, seed=3))
    fitted = LatentPreview.fit(pipe)
    preview = fitted.image(result.last.latents[0])
    assert preview.size == result.images[0].image.size
    # one colour per latent pixel: compare it with the decoded image averaged over each latent pixel's patch
    decoded = torch.tensor(np.asarray(result.images[0].image.convert("L"), dtype=np.float32))[None, None]
    patches = torch.nn.functional.avg_pool2d(decoded, fitted.factor).ravel().numpy()
    approx = np.asarray(preview.convert("L"), dtype=np.float32)[:: fitted.factor, :: fitted.factor].ravel()
    assert np.corrcoef(patches, approx)[0, 1] > 0.8


def test_model_sizes_count_the_file_a_loader_reads_and_survive_a_damaged_header(tmp_path, tiny_dir):
    """Review of issue 20: a folder's fp16 variant is not counted beside its own weights, an EMA copy in a
    single file is not counted, and a damaged header falls back to the file's size instead of a traceback."""
    from safetensors.torch import save_file

    from sdlab.loading.checkpoint import weights_bytes

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_dir, folder)
    alone = weights_bytes(folder, torch.float32)
    for sub in ("unet", "vae"):
        shutil.copy(
            next((folder / sub).glob("*.safetensors")),
            folder / sub / "diffusion_pytorch_model.fp16.safetensors",
        )
    assert weights_bytes(folder, torch.float32) == alone
    save_file(
        {"model.diffusion_model.x": torch.zeros(10), "model_ema.x": torch.zeros(1000)},
        str(tmp_path / "m.safetensors"),
    )
    assert weights_bytes(tmp_path / "m.safetensors", torch.float32) == 40
    (tmp_path / "bad.safetensors").write_bytes((16).to_bytes(8, "little") + b"{not json at all")
    assert weights_bytes(tmp_path / "bad.safetensors", torch.float32) == 24


def test_folder_embeddings_are_found_as_a1111_finds_them(tmp_path, tiny_dir):
    """A1111's `EmbeddingDatabase`: a name matches in any case (CLIP lower-cases) and in subfolders; a file for
    another width (an SDXL or SD 2 embedding beside SD 1.5 ones) is skipped, its word left as text and the
    request answered, listed as skipped; an empty file is no embedding."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root / "models" / "Stable-diffusion" / "tiny")
    (root / "embeddings" / "styles").mkdir(parents=True)
    save_embedding(
        root / "embeddings" / "styles" / "MyStyle.safetensors", "MyStyle", torch.randn(2, 32), a1111=True
    )
    save_embedding(root / "embeddings" / "wide.safetensors", "wide", torch.randn(1, 768), a1111=True)
    (root / "embeddings" / "empty.pt").write_bytes(b"")
    registry = ModelRegistry.from_a1111(root)
    assert sorted(registry.embeddings()) == ["MyStyle", "wide"]
    request = GenerationRequest("a mystyle cat", model="tiny", **FAST)
    lower, exact = (
        run_request(registry, request),
        run_request(registry, request.replace(prompt="a MyStyle cat")),
    )
    plain = run_request(registry, request.replace(prompt="a cat"))
    assert np.array_equal(pixels(lower), pixels(exact)) and not np.array_equal(pixels(lower), pixels(plain))
    skipped = run_request(registry, request.replace(prompt="a wide cat"))
    text = run_request(
        ModelRegistry(allow_paths=True), request.replace(prompt="a wide cat", model=str(tiny_dir))
    )
    assert skipped.extra["skipped_embeddings"] == ["wide"]
    assert np.array_equal(pixels(skipped), pixels(text))  # the word as text, as without the folder
    with pytest.raises(InputError, match="width 768"):  # asked for by name, it must fit
        run_request(registry, request.replace(prompt="a cat", embeddings=("wide",)))
