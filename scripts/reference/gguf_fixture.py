"""Writes tests/fixtures/gguf_reference.json: what the `gguf` PyPI package (llama.cpp's own Python
reader) reads from the default model, for tests/gguf_model.rs to compare the Rust reader against.

Run from the repository root (installs `gguf` into .venv if it is missing):
    .venv/bin/python scripts/reference/gguf_fixture.py
"""

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("gguf") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "gguf==0.19.0"])

import numpy as np  # noqa: E402  (gguf brings numpy)
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

MODEL = Path("models/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = Path("tests/fixtures/gguf_reference.json")
# Tensors whose dequantised values are checked: one of each type in the file.
CHECKED = ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.0.attn_norm.weight"]
SAMPLES = 16


def scalar(field):
    value = field.contents()
    return value if not isinstance(value, (np.generic,)) else value.item()


def main():
    reader = GGUFReader(MODEL)
    fields = reader.fields
    metadata = {}
    for key in [
        "general.architecture",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.dimension_count",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ]:
        metadata[key] = scalar(fields[key])
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = fields["tokenizer.ggml.merges"].contents()

    tensors = [
        {"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in reversed(t.shape)]}
        for t in reader.tensors
    ]
    values = {}
    for name in CHECKED:
        t = next(t for t in reader.tensors if t.name == name)
        w = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        # Evenly spread flat indices, first and last included.
        indices = np.linspace(0, w.size - 1, SAMPLES).round().astype(np.int64)
        values[name] = {
            "indices": indices.tolist(),
            "values": [float(w[i]) for i in indices],
            "sum": float(w.sum()),
            "sum_of_squares": float((w * w).sum()),
        }

    reference = {
        "source": f"gguf {importlib.metadata.version('gguf')} GGUFReader and gguf.quants.dequantize",
        "version": int(scalar(fields["GGUF.version"])),
        "tensor_count": len(reader.tensors),
        "metadata_count": int(scalar(fields["GGUF.kv_count"])),
        "metadata": metadata,
        "token_count": len(tokens),
        "tokens_sample": {str(i): tokens[i] for i in [0, 1, 2, 100, 1000, 49151]},
        "merge_count": len(merges),
        "merges_sample": [merges[0], merges[-1]],
        "tensors": tensors,
        "dequantised": values,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {len(tensors)} tensors, {len(values)} dequantised checks")


if __name__ == "__main__":
    main()
