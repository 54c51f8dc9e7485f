"""`sdlab serve`: the AUTOMATIC1111-compatible HTTP API on uvicorn, secure by default."""

from __future__ import annotations

import os
import signal
import sys

from sdlab.cli.options import ServeOptions
from sdlab.errors import InputError
from sdlab.server.security import LOOPBACK_HOSTS, parse_credentials
from sdlab.service import ModelRegistry
from sdlab.service.limits import Limits


def run_serve(opts: ServeOptions) -> None:
    # 1. Refuse an unsafe or broken configuration before anything is loaded
    auth = opts.api_auth or os.environ.get("SDLAB_API_AUTH")
    if opts.listen and not auth:
        raise InputError(
            "--listen makes the server reachable from the network; it needs --api-auth USER:PASSWORD "
            "(or SDLAB_API_AUTH) so that only you can use it"
        )
    try:
        credentials = parse_credentials(auth) if auth else []
    except ValueError as err:
        raise InputError(str(err)) from None
    if not 1 <= opts.port <= 65535:
        raise InputError(f"--port must be from 1 to 65535, got {opts.port}")
    if opts.max_body_mb <= 0:
        raise InputError(f"--max-body-mb must be positive, got {opts.max_body_mb}")
    if opts.checkpoints_memory_gb is not None and not opts.checkpoints_memory_gb > 0:
        raise InputError(f"--checkpoints-memory-gb must be positive, got {opts.checkpoints_memory_gb}")
    if opts.queue_size < 1:
        raise InputError(f"--queue-size must be at least 1, got {opts.queue_size}")
    hosts = None if opts.listen else set(LOOPBACK_HOSTS)
    if opts.allowed_hosts:
        hosts = (hosts or set()) | {h.strip() for h in opts.allowed_hosts.split(",") if h.strip()}
    origins = tuple(o.strip() for o in (opts.cors_allow_origins or "").split(",") if o.strip())

    # 2. Models by name, from the folders given (A1111's layout under --data-dir)
    from sdlab.loading.parts import check_parts

    check_parts({"vae": opts.vae_path})  # a missing file stops here, not at the first request
    common = dict(
        device=opts.device,
        dtype=opts.dtype,
        cache_size=opts.checkpoints_limit,
        cache_bytes=None if opts.checkpoints_memory_gb is None else int(opts.checkpoints_memory_gb * 1e9),
        allow_pickle=opts.allow_pickle,
        compile=opts.compile,
        parts={"vae": opts.vae_path},
        parts_where_they_fit=True,  # A1111's --vae-path, for every model it fits
    )
    folders = {
        "ckpt": _dirs(opts.ckpt_dir),
        "lora": _dirs(opts.lora_dir),
        "embeddings": _dirs(opts.embeddings_dir),
        "upscalers": _dirs(opts.upscaler_dir),
    }
    if opts.data_dir:
        a1111 = ModelRegistry.from_a1111(opts.data_dir, **common)
        for key, found in (
            ("ckpt", a1111.ckpt_dirs),
            ("lora", a1111.lora_dirs),
            ("embeddings", a1111.embedding_dirs),
            ("upscalers", a1111.upscaler_dirs),
        ):
            folders[key] = [*found, *folders[key]]
    registry = ModelRegistry(
        folders["ckpt"], folders["lora"], folders["embeddings"], upscaler_dirs=folders["upscalers"], **common
    )

    if opts.vae_decoder and opts.vae_decoder != "tiny":  # a bad folder stops here, in one sentence
        from sdlab.loading.decoder import load_vae_decoder

        load_vae_decoder(opts.vae_decoder)

    # 3. The worker (it loads the default model at once), the app, uvicorn; gradio's uploads and the UI's images
    #    in a folder of this server's own (owner-only, removed on exit), not the shared /tmp/gradio
    import atexit
    import shutil
    import tempfile

    import uvicorn

    private = tempfile.mkdtemp(prefix="sdlab-serve-")  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = private  # read when gradio is imported, below
    atexit.register(shutil.rmtree, private, ignore_errors=True)

    from sdlab.server.app import create_app
    from sdlab.service.worker import Worker

    worker = Worker(
        registry, max_queue=opts.queue_size, preview_decoder=opts.vae_decoder, limits=_limits(opts)
    )
    worker.submit(lambda w: w.registry.pipeline(w.registry.find_model()))
    app = create_app(
        registry,
        worker,
        allowed_hosts=hosts,
        allowed_origins=origins,
        credentials=credentials,
        max_body=int(opts.max_body_mb * 2**20),
    )
    host = "0.0.0.0" if opts.listen else "127.0.0.1"
    shown = "127.0.0.1" if not opts.listen else host
    models = ", ".join(e.name for e in registry.models())
    print(
        f"sdlab serve: web UI http://{shown}:{opts.port}/, API http://{shown}:{opts.port}/sdapi/v1 "
        f"(docs: /docs); models: {models}",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises a SIGTERM it caught once it has shut down; as an exception here, the exit cleans up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(app, host=host, port=opts.port, log_level="warning", server_header=False)


def _limits(opts) -> Limits:
    """What one request may cost: the device's defaults (`Limits.for_device`), each flag given replacing its
    own (0: no limit); `InputError` for a negative one."""
    import dataclasses

    import torch

    from sdlab.loading import resolve_device

    device = resolve_device(opts.device)
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    limits = Limits.for_device(device.type, memory)
    for f in dataclasses.fields(Limits):
        value = getattr(opts, f.name)
        if value is None:
            continue
        if value < 0:
            raise InputError(f"--{f.name.replace('_', '-')} must be 0 (no limit) or positive, got {value}")
        limits = dataclasses.replace(limits, **{f.name: value or None})
    return limits


def _dirs(value: str | None) -> list[str]:
    """A comma-separated list of folders (a flag may name several)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]
