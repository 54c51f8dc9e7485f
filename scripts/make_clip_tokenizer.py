"""Build the CLIP BPE tokenizer files that sdlab ships, from open_clip's MIT-licensed vocabulary.

The vocabulary of OpenAI's CLIP (the one every SD 1.x/2.x text encoder uses) ships as
`open_clip/bpe_simple_vocab_16e6.txt.gz` inside the PyPI wheel of open_clip_torch. This script turns it
into the `vocab.json` + `merges.txt` pair that transformers' `CLIPTokenizer` reads, with the same id
layout as OpenAI's original tokenizer (256 byte tokens, their `</w>` forms, 48,894 merges, then
`<|startoftext|>` and `<|endoftext|>`: 49,408 ids).

    pip download --no-deps open_clip_torch -d /tmp/oc
    python scripts/make_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl
"""

import argparse
import gzip
import json
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "sdlab" / "loading" / "clip_tokenizer"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheel", type=Path, help="open_clip_torch wheel (or the .txt.gz itself)")
    args = parser.parse_args()
    if args.wheel.suffix == ".whl":
        with zipfile.ZipFile(args.wheel) as z:
            raw = z.read(BPE_MEMBER)
    else:
        raw = args.wheel.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # as CLIP's own tokenizer
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(vocab) == 49408, len(vocab)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
