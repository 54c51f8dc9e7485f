"""Fine-tuning with automatic captions, in full and with LoRA: the digits model learns a new visual domain.

Domain (default): underlined digits, a line drawn under each digit: something the base model never draws,
that the frozen digits VAE can reproduce (it was trained on white strokes on black only, and cannot
reconstruct the domains the issue suggests, inverted colours or outlines: mean squared error 2.6 and 0.09
against 0.005; an underline: 0.017), and that the digits captioner has no word for. The captioner writes
the captions (`sdlab caption --captioner digits`), not a person, so they read like the base model's own
("a thick handwritten digit 7"): fine-tuning then has to move what plain prompts draw, as fine-tuning SD
on a photo style does. After fine-tuning, plain prompts ("a handwritten digit 7") should draw the domain
>= 90% of the time with prompt accuracy >= 90% (a digit in the domain is read with its underline removed).
The LoRA run repeats it with <= 5% of the trainable parameters.

`--domain italic` (digits sheared far right) shows the other case: the captioner names the slant ("slanted
to the right") in four captions of five, the look binds to those words, and plain prompts stay upright.

    python scripts/demo_finetune.py --out runs/demo-finetune     # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse

import numpy as np
from _demo import DEMO_SAMPLING, fresh, publish, run

from sdlab.digits.data import train_test_split
from sdlab.digits.folders import write_digits
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.teaching import DOMAINS, domain_report
from sdlab.loading import load_pipeline
from sdlab.lora import load_lora
from sdlab.training.lora import add_lora_adapters, trainable_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo-finetune")
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="underline")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lora-steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--train-text-encoder", action="store_true", help="train the text encoder too")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--per-digit", type=int, default=20)
    args = parser.parse_args()
    out = fresh(args.out)
    train, _ = train_test_split()
    pick = np.random.default_rng(0).permutation(len(train))[: args.images]
    data = out / "data"
    domain = DOMAINS[args.domain]
    write_digits(data, domain.make(train.images[pick] / 255.0))
    caption_s = run("caption", data, "--captioner", "digits", "--overwrite")

    judge = Judge.load()
    sampling = dict(DEMO_SAMPLING)
    report = {"domain": domain.name, "images": args.images, "caption_seconds": caption_s}
    report["base"] = domain_report(load_pipeline(), judge, domain, args.per_digit, **sampling)
    common = ["--batch-size", 32, "--caption-dropout", 0.1, "--checkpoint-every", 200, "--validation-prompt",
              "a handwritten digit 3|a handwritten digit 7", "--lr-scheduler", "cosine", "--warmup-steps", 20]  # fmt: skip
    if args.train_text_encoder:  # the digit words themselves may then absorb the new domain
        common += ["--train-text-encoder"]
    seconds = run("finetune", data, "-o", out / "full", "--steps", args.steps, "--lr", args.lr, *common)
    report["full"] = {"seconds": seconds, "steps": args.steps,
                      **domain_report(load_pipeline(out / "full" / "model"), judge, domain, args.per_digit, **sampling)}  # fmt: skip
    lora_args = ["-o", out / "lora", "--steps", args.lora_steps, "--lr", args.lora_lr, "--rank", args.rank]
    seconds = run("lora", data, *lora_args, *common)
    pipe = load_pipeline()
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    text_params = sum(p.numel() for p in pipe.text_encoder.parameters())
    adapters = add_lora_adapters(load_pipeline(), args.rank, text_encoder=args.train_text_encoder)
    lora_params = sum(p.numel() for p in trainable_parameters(adapters))
    lora_pipe = load_pipeline()
    load_lora(lora_pipe, out / "lora" / "pytorch_lora_weights.safetensors")
    report["lora"] = {"seconds": seconds, "steps": args.lora_steps, "rank": args.rank,
                      "trainable_share": lora_params / (unet_params + (text_params if args.train_text_encoder else 0)),
                      **domain_report(lora_pipe, judge, domain, args.per_digit, **sampling)}  # fmt: skip
    rows = [("base model", report["base"], "—", "—")]
    rows += [("full fine-tune", report["full"], "100%", f"{report['full']['seconds'] / 60:.1f} min")]
    rows += [(f"LoRA rank {args.rank}", report["lora"], f"{report['lora']['trainable_share']:.1%}",
              f"{report['lora']['seconds'] / 60:.1f} min")]  # fmt: skip
    table = "\n".join(
        [f"| model | {domain.name} share | prompt accuracy | trainable params | training time |",
         "| --- | --- | --- | --- | --- |"]
        + [f"| {name} | {r['domain_share']:.2f} | {r['prompt_accuracy']:.2f} | {share} | {time} |"
           for name, r, share, time in rows]
    ) + (
        f"\n\n{args.images} {domain.name} digits captioned by the digits captioner; plain prompts \"a handwritten digit D\", "
        f"{args.per_digit * 10} images per row, 20 steps, DPM++ 2M at CFG 1.5. Command: `python scripts/demo_finetune.py "
        f"--domain {args.domain}`.\n")  # fmt: skip
    publish("finetune" if args.domain == "underline" else f"finetune-{args.domain}", report, table)


if __name__ == "__main__":
    main()
