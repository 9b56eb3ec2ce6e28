#!/usr/bin/env python3
"""Greedy agreement with the f32 model: the same 30 prompts (20 chat, 10 raw) through `infini serve`
at each precision, and how many replies share their first 8 words with f32's. A check of what a
precision costs in answers (issue 16 asks for a fuller table with llama.cpp beside it).

    scripts/agreement.py --binary target/release/infini [--precisions f32,bf16,int4] [--port 8095]
"""

import argparse
import json
import os
import subprocess
import tempfile
import time
import urllib.request

CHAT = [
    "What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
    "Who wrote Romeo and Juliet?", "Give me a synonym for happy.",
    "What is the boiling point of water in Celsius?", "Translate 'good morning' into Spanish.",
    "What planet is known as the Red Planet?", "How many days are in a leap year?",
    "Write a haiku about the sea.", "What is photosynthesis?", "Suggest a name for a pet cat.",
    "What is the largest ocean on Earth?", "Explain gravity in one sentence.",
    "What is the square root of 81?", "List two benefits of exercise.",
    "What language is spoken in Brazil?", "Who painted the Mona Lisa?",
    "What is the chemical symbol for gold?", "Tell me a fun fact about octopuses.",
]
RAW = [
    "The capital of France is", "Once upon a time, in a small village,",
    "The three laws of motion are", "def fibonacci(n):", "Water boils at", "The quick brown fox",
    "In 1969, humans first", "The most important thing about learning is", "Paris is known for",
    "A healthy breakfast includes",
]


def replies(binary, precision, port):
    """Every prompt's greedy reply (20 tokens) from a server at `precision`."""
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFINI_")}
        env.update(INFINI_PRECISION=precision, INFINI_ADDR=f"127.0.0.1:{port}", INFINI_DATA_DIR=data)
        server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/ready", timeout=2)
                    break
                except OSError:
                    time.sleep(0.2)

            def post(path, body):
                request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"})
                return json.load(urllib.request.urlopen(request, timeout=300))

            out = {}
            for q in CHAT:
                body = {"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 20}
                out["chat: " + q] = post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
            for q in RAW:
                body = {"prompt": q, "temperature": 0, "max_tokens": 20}
                out["raw: " + q] = post("/v1/completions", body)["choices"][0]["text"]
            return out
        finally:
            server.terminate()
            server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/infini")
    parser.add_argument("--precisions", default="bf16,int4")
    parser.add_argument("--port", type=int, default=8095)
    args = parser.parse_args()
    reference = replies(args.binary, "f32", args.port)
    print("| precision | agrees with f32 (first 8 words) | differs on |")
    print("|---|---|---|")
    for precision in args.precisions.split(","):
        other = replies(args.binary, precision, args.port)
        differ = [k for k, v in reference.items() if v.split()[:8] != other[k].split()[:8]]
        print(f"| {precision} | {len(reference) - len(differ)}/{len(reference)} | "
              f"{'; '.join(differ) or '—'} |")


if __name__ == "__main__":
    main()
