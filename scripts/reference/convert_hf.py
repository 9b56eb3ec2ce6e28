#!/usr/bin/env python3
"""Converts the default GGUF into a Hugging Face model folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) under the git-ignored models/, for `src/model/hf.rs`.

Usage: .venv/bin/python scripts/reference/convert_hf.py [--out models/smollm2-hf]
The weights are the GGUF's, dequantised to f32 by transformers (so the folder and the GGUF hold
the same numbers). Idempotent: an existing complete folder is left alone unless --force.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MODELS, load_reference  # noqa: E402

NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(MODELS, "smollm2-hf"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if not args.force and all(os.path.exists(os.path.join(args.out, f)) for f in NEEDED):
        print(f"{args.out} is complete; nothing to do (--force to redo)")
        return
    model, tokenizer = load_reference()
    # save_pretrained refuses a model that transformers marks as GGUF-quantised, although its
    # weights are plain dequantised f32 tensors by now: write the folder's files directly.
    from safetensors.torch import save_file

    os.makedirs(args.out, exist_ok=True)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    missing = [f for f in NEEDED if not os.path.exists(os.path.join(args.out, f))]
    if missing:
        sys.exit(f"conversion left out {missing} in {args.out}")
    print(f"wrote {args.out}: {sorted(os.listdir(args.out))}")


if __name__ == "__main__":
    main()
