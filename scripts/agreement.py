#!/usr/bin/env python3
"""Greedy agreement with the f32 model: the same 30 prompts (20 chat, 10 raw) through `infini serve`
at each precision, and how many replies share their first 8 words with f32's; and the same for
llama.cpp (llama-cpp-python 0.3.36 on the same GGUF, its chat template, greedy, no repetition
penalty), the peer a user would compare with (issue 16 item 3).

    scripts/agreement.py --binary target/release/infini [--precisions bf16,int4] [--port 8095] [--no-peer]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
from common import GGUF_FILE, MODELS, ensure_packages  # noqa: E402

# The prompts, shared with tests/agreement.rs (which holds the default's agreement to a floor).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "agreement_prompts.json"), encoding="utf-8") as prompts:
    PROMPTS = json.load(prompts)
CHAT, RAW = PROMPTS["chat"], PROMPTS["raw"]


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


def peer_replies():
    """Every prompt's greedy reply (20 tokens) from llama.cpp on the same GGUF. One token per
    batch: the llama-cpp-python build here crashes on prompt batches with AMX (see
    reference/bench_llama_cpp.py); it changes the speed, not the result."""
    ensure_packages("llama_cpp==llama-cpp-python==0.3.36")
    from llama_cpp import Llama

    llm = Llama(model_path=os.path.join(MODELS, GGUF_FILE), n_ctx=512, n_batch=1, n_ubatch=1, verbose=False)
    greedy = dict(temperature=0.0, top_k=1, repeat_penalty=1.0, max_tokens=20)
    out = {}
    for q in CHAT:
        reply = llm.create_chat_completion([{"role": "user", "content": q}], **greedy)
        out["chat: " + q] = reply["choices"][0]["message"]["content"]
    for q in RAW:
        out["raw: " + q] = llm.create_completion(q, **greedy)["choices"][0]["text"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/infini")
    parser.add_argument("--precisions", default="bf16,int4")
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    args = parser.parse_args()
    reference = replies(args.binary, "f32", args.port)
    print("| precision | agrees with f32 (first 8 words) | differs on |")
    print("|---|---|---|")
    rows = [(p, lambda p=p: replies(args.binary, p, args.port)) for p in args.precisions.split(",")]
    if not args.no_peer:
        rows.append(("llama.cpp Q4_1", peer_replies))
    for precision, run in rows:
        other = run()
        differ = [k for k, v in reference.items() if v.split()[:8] != other[k].split()[:8]]
        print(f"| {precision} | {len(reference) - len(differ)}/{len(reference)} | "
              f"{'; '.join(differ) or '—'} |")


if __name__ == "__main__":
    main()
