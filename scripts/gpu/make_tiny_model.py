#!/usr/bin/env python3
"""A tiny Llama model folder with the default model's tokenizer and random weights (seeded), small
enough to travel to a GPU machine (a few MB): the GPU check (scripts/gpu/check.sh) runs the whole
engine on it — loading, bf16 on CUDA, the four-tier session memory, the batched server — where the
real model's 98 MB file cannot go. Its outputs are meaningless text; the check is that they run.

Usage: .venv/bin/python scripts/gpu/make_tiny_model.py OUT_DIR
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "models", "smollm2-hf")


def main(out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(SOURCE, "config.json")) as f:
        config = json.load(f)
    config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(SOURCE, name)):
            shutil.copy(os.path.join(SOURCE, name), out)
    g = torch.Generator().manual_seed(7)
    c, i, v, d = 64, 128, config["vocab_size"], 16
    shapes = {"model.embed_tokens.weight": (v, c), "model.norm.weight": None}
    for layer in range(2):
        p = f"model.layers.{layer}"
        shapes.update({
            f"{p}.input_layernorm.weight": None, f"{p}.post_attention_layernorm.weight": None,
            f"{p}.self_attn.q_proj.weight": (4 * d, c), f"{p}.self_attn.k_proj.weight": (2 * d, c),
            f"{p}.self_attn.v_proj.weight": (2 * d, c), f"{p}.self_attn.o_proj.weight": (c, 4 * d),
            f"{p}.mlp.gate_proj.weight": (i, c), f"{p}.mlp.up_proj.weight": (i, c),
            f"{p}.mlp.down_proj.weight": (c, i),
        })
    tensors = {
        name: (torch.ones(c) if shape is None else torch.randn(shape, generator=g) * 0.2).to(torch.bfloat16)
        for name, shape in shapes.items()
    }
    save_file(tensors, os.path.join(out, "model.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
