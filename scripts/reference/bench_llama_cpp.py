#!/usr/bin/env python3
"""The peer's side of benches/model.rs: llama-cpp-python (llama.cpp) on the same GGUF, batch 1.

Usage: bench_llama_cpp.py GGUF TOKENS_JSON --decode N --threads T
TOKENS_JSON holds {"prompts": [[ids...], ...]}. For each prompt: prefill it in one eval (timed), then
decode N tokens greedily one eval at a time (timed). Prints one JSON line per prompt:
{"prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s"}.
Installs llama-cpp-python==0.3.36 into this interpreter's environment if it is missing (it builds
from its sdist: minutes on 2 cores).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ensure_packages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("tokens_json")
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--token-by-token", action="store_true",
                        help="prefill one token per eval: llama-cpp-python 0.3.36 built here (AMX_INT8 "
                             "CPU) segfaults in llama_decode on batches of 2+ tokens; decode is unaffected")
    args = parser.parse_args()
    ensure_packages("llama_cpp==llama-cpp-python==0.3.36")
    import numpy as np
    from llama_cpp import Llama

    prompts = json.load(open(args.tokens_json))["prompts"]
    context = max(len(p) for p in prompts) + args.decode + 16
    llm = Llama(model_path=args.gguf, n_ctx=context, n_batch=max(512, context), n_ubatch=512,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    def feed(tokens):
        if args.token_by_token:
            for token in tokens:
                llm.eval([token])
        else:
            llm.eval(tokens)

    feed(prompts[0][:8])  # warm-up
    for prompt in prompts:
        llm.reset()
        start = time.perf_counter()
        feed(prompt)
        prefill = time.perf_counter() - start
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        for _ in range(args.decode - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode = time.perf_counter() - start
        print(json.dumps({
            "prompt_tokens": len(prompt),
            "prefill_tokens_per_s": len(prompt) / prefill,
            "decode_tokens_per_s": (args.decode - 1) / decode,
        }), flush=True)


if __name__ == "__main__":
    main()
