#!/usr/bin/env python3
"""Reference fixtures for tests/model_reference.rs: Hugging Face transformers, on the CPU in f32,
runs the default GGUF (dequantised by transformers) on fixed, varied prompts and stores per prompt
  * the prompt's token ids (so the Rust test needs neither Python nor our tokenizer),
  * at a few positions: the top-16 token ids with their logits, and the logsumexp of the full row
    (it pins the whole distribution, not just its head),
  * the greedy continuation of 32 tokens (end-of-text does not stop it), with the margin between the
    best and second-best logit at each step (to explain a near-tie, should one ever flip).

Usage: .venv/bin/python scripts/reference/make_fixtures.py  ->  tests/fixtures/reference_logits.json
Deterministic: rerunning writes the same file (up to float printing).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GGUF_FILE, ROOT, load_reference  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "reference_logits.json")
TOP_K = 16
CONTINUATION = 32

RAW_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "1, 1, 2, 3, 5, 8, 13,",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "In 1969, Neil Armstrong",
    "Photosynthesis is the process by which",
    "SELECT name, age FROM users WHERE",
    "Les mathématiques sont",
    "東京は日本の",
    "To be, or not to be, that is the question:",
    "<html>\n<head>\n<title>",
    "Water boils at 100 degrees Celsius, which is",
    "   indented    text   with   odd   spacing   and\ttabs\t",
    "The mitochondria is the powerhouse of",
    "Emoji test: 😀🎉🚀 are",
]
CHAT_PROMPTS = [
    "What is the boiling point of water?",
    "Write a haiku about autumn leaves.",
    "Explain recursion to a five-year-old.",
    "List three prime numbers greater than 100.",
    "Translate 'good morning' into Spanish.",
]
# One longer prompt so that positions well past the first few hundred are covered too.
LONG_PROMPT = " ".join(
    f"Item {i}: the {['red', 'green', 'blue', 'yellow'][i % 4]} box holds {i * 7 % 23} marbles." for i in range(40)
) + " The box of item 17 holds"


def main() -> None:
    import torch

    torch.manual_seed(0)
    model, tokenizer = load_reference()
    prompts = [("raw", p, tokenizer(p, add_special_tokens=False)["input_ids"]) for p in RAW_PROMPTS]
    for p in CHAT_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        prompts.append(("chat", p, list(ids)))
    prompts.append(("raw", LONG_PROMPT, tokenizer(LONG_PROMPT, add_special_tokens=False)["input_ids"]))

    cases = []
    with torch.no_grad():
        for kind, text, ids in prompts:
            input_ids = torch.tensor([ids])
            logits = model(input_ids).logits[0].float()  # [T, V]
            t = len(ids)
            positions = sorted({0, t // 2, t - 1})
            checks = []
            for pos in positions:
                row = logits[pos]
                values, indices = row.topk(TOP_K)
                checks.append({
                    "position": pos,
                    "top_ids": indices.tolist(),
                    "top_logits": [round(v, 5) for v in values.tolist()],
                    "logsumexp": round(row.logsumexp(0).item(), 5),
                })
            # Greedy decoding by hand with full recomputation: independent of any cache.
            generated, margins = [], []
            sequence = list(ids)
            past = None
            step_input = input_ids
            for _ in range(CONTINUATION):
                out = model(step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                row = out.logits[0, -1].float()
                top2 = row.topk(2).values
                token = int(row.argmax())
                generated.append(token)
                margins.append(round((top2[0] - top2[1]).item(), 5))
                sequence.append(token)
                step_input = torch.tensor([[token]])
            cases.append({
                "kind": kind,
                "text": text,
                "prompt_ids": ids,
                "checks": checks,
                "greedy": generated,
                "greedy_margins": margins,
                "greedy_text": tokenizer.decode(generated),
            })
            print(f"{kind:4} {t:4} tokens -> {tokenizer.decode(generated)!r}", file=sys.stderr)

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({
            "reference": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, CPU, f32",
            "model": GGUF_FILE,
            "top_k": TOP_K,
            "continuation": CONTINUATION,
            "cases": cases,
        }, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(cases)} prompts)", file=sys.stderr)


if __name__ == "__main__":
    main()
