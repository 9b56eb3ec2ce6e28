"""Shared set-up of the reference scripts: install their Python packages into .venv (idempotent)
and load the default GGUF with Hugging Face transformers, dequantised to f32 on the CPU."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_packages(*requirements: str) -> None:
    """pip-installs each requirement whose module is missing. A requirement is a pip name
    (`transformers`) or `module==pip requirement` where they differ (`llama_cpp==llama-cpp-python==0.3.36`)."""
    def split(requirement: str) -> tuple[str, str]:
        module, _, pip_name = requirement.partition("==")
        if pip_name and not pip_name[0].isdigit():
            return module, pip_name
        return module.replace("-", "_"), requirement

    missing = [pip_name for module, pip_name in map(split, requirements) if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing {' '.join(missing)} into {sys.prefix}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *missing])


def load_reference(gguf_file: str = GGUF_FILE):
    """(model, tokenizer) from the GGUF in models/, dequantised by transformers to f32, eval mode."""
    ensure_packages("transformers", "gguf", "accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(MODELS, gguf_file)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run ./scripts/setup.sh to fetch the default model")
    tokenizer = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=gguf_file, dtype=torch.float32)
    model.eval()
    return model, tokenizer
