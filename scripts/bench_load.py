#!/usr/bin/env python3
"""Load benchmark (issue #6): N concurrent streaming chat sessions against `infini serve` and
against llama.cpp's own `llama-server` (continuous batching, -np 16) on the same GGUF, with the same
prompts and max tokens, one server at a time on the same cores, in one run.

Scenarios: N = 1, 4, 16 clients with a short question each; and N clients that continue a
conversation holding a long history (7,800 tokens each by default). For the long one, each client's
history is taken in first (not timed: infini keeps it in the session's memory, llama-server in its
slot's prompt cache), then the timed turn asks one more question.

Prints, per scenario and server: aggregate tokens/s (generated tokens of all clients over the
scenario's wall time), time to first token p50/p99, inter-token latency p50/p99, and the ratio
infini / llama-server. Standard library only.

    python3 scripts/bench_load.py --infini target/release/infini \
        --llama-server "$(scripts/build_llama_server.sh)" [--clients 1,4,16] [--max-tokens 64]
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

QUESTIONS = [
    "Tell me a long story about a lighthouse keeper.",
    "Explain in detail how bread is made.",
    "Describe a walk through a forest in autumn.",
    "Write a long letter to a friend about your holidays.",
    "Explain how a bicycle works, step by step.",
    "Describe the life of a honey bee.",
    "Tell me about the history of sailing ships.",
    "Write a story about a dragon who learns to cook.",
]


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Server:
    """A server process on a free port, stopped on exit."""

    def __init__(self, name, command, env, ready_path, port_from_stdout):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        if port_from_stdout:
            line = self.process.stdout.readline()
            match = re.search(r"http://([\d.]+):(\d+)", line)
            if not match:
                self.stop()
                sys.exit(f"{name}: no address in {line!r}; log {self.log.name}")
            self.host, self.port = match.group(1), int(match.group(2))
        else:
            self.host, self.port = "127.0.0.1", int(command[command.index("--port") + 1])
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{name} exited; log {self.log.name}")
            try:
                status, _ = self.request("GET", ready_path)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        sys.exit(f"{name} not ready after 600 s; log {self.log.name}")

    def request(self, method, path, body=None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=900)
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def stream_chat(server, body):
    """One streaming chat request: (time to first token, inter-token gaps, tokens, seconds)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=900)
    started = time.perf_counter()
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{server.name}: {response.status} {response.read()[:300]!r}")
    arrivals, usage = [], None
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices", []):
            if (choice.get("delta") or {}).get("content"):
                arrivals.append(time.perf_counter())
    ended = time.perf_counter()
    connection.close()
    tokens = usage["completion_tokens"] if usage else len(arrivals)
    if not arrivals:
        return None, [], tokens, ended - started
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return arrivals[0] - started, gaps, tokens, ended - started


def run_clients(server, bodies):
    """All bodies at once, one thread each; returns the aggregate figures."""
    results = [None] * len(bodies)
    errors = []

    def client(i):
        try:
            results[i] = stream_chat(server, bodies[i])
        except Exception as e:  # reported below, the run goes on
            errors.append(str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done = [r for r in results if r is not None]
    ttft = [r[0] for r in done if r[0] is not None]
    gaps = [g for r in done for g in r[1]]
    tokens = sum(r[2] for r in done)
    return {
        "clients": len(bodies),
        "errors": errors,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(gaps, 50),
        "itl_p99": percentile(gaps, 99),
    }


def chat_body(messages, max_tokens, extra):
    body = {
        "model": "default",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(extra)
    return body


def histories(text_path, count, tokens, server):
    """`count` different slices of the text of about `tokens` tokens each (by llama-server's
    tokenizer, the same vocabulary as infini's)."""
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for i in range(count):
        piece = text[i * tokens * 6: i * tokens * 6 + tokens * 6]
        status, data = server.request("POST", "/tokenize", {"content": piece})
        ids = json.loads(data)["tokens"][:tokens]
        status, data = server.request("POST", "/detokenize", {"tokens": ids})
        out.append(json.loads(data)["content"])
    return out


def scenarios(args):
    out = [("short", n, None) for n in args.clients]
    if args.long_history > 0:
        out.append(("long", args.long_clients, args.long_history))
    return out


def bench_server(server, kind, args, long_texts):
    """Every scenario against one server."""
    results = {}
    extra = {}  # the same request for both: greedy, until EOS or max_tokens
    # Warm-up: one short request (first-touch costs out of the way).
    stream_chat(server, chat_body([{"role": "user", "content": "Hi."}], 8, extra))
    for name, n, history in scenarios(args):
        label = f"{name} N={n}" + (f" ({history} tokens of history)" if history else "")
        if history is None:
            bodies = [
                chat_body([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], args.max_tokens, extra)
                for i in range(n)
            ]
        else:
            bodies = []
            for i in range(n):
                first = [{"role": "user", "content": "Read this passage.\n\n" + long_texts[i]}]
                question = {"role": "user", "content": "What was the passage about?"}
                if kind == "infini":
                    status, data = server.request("POST", "/v1/sessions", {})
                    session = json.loads(data)["id"]
                    setup = chat_body(first, 1, {"session_id": session})
                    setup["stream"] = False
                    del setup["stream_options"]
                    status, data = server.request("POST", "/v1/chat/completions", setup)
                    if status != 200:
                        sys.exit(f"infini: history turn failed: {status} {data[:300]!r}")
                    reply = json.loads(data)["choices"][0]["message"]["content"]
                    bodies.append(chat_body([question], args.max_tokens, {"session_id": session}))
                else:
                    setup = chat_body(first, 1, extra)
                    setup["stream"] = False
                    del setup["stream_options"]
                    setup["cache_prompt"] = True
                    status, data = server.request("POST", "/v1/chat/completions", setup)
                    if status != 200:
                        sys.exit(f"llama-server: history turn failed: {status} {data[:300]!r}")
                    reply = json.loads(data)["choices"][0]["message"]["content"]
                    messages = first + [{"role": "assistant", "content": reply}, question]
                    bodies.append(chat_body(messages, args.max_tokens, dict(extra, cache_prompt=True)))
        result = run_clients(server, bodies)
        results[label] = result
        print(
            f"  {server.name:13} {label:40} {result['tokens_per_s']:7.1f} tok/s  "
            f"TTFT p50 {result['ttft_p50']:.2f} s p99 {result['ttft_p99']:.2f} s  "
            f"ITL p50 {result['itl_p50'] * 1000:.0f} ms p99 {result['itl_p99'] * 1000:.0f} ms"
            + (f"  ERRORS {result['errors'][:2]}" if result["errors"] else ""),
            flush=True,
        )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--infini", default="target/release/infini")
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--long-history", type=int, default=7800, help="0: no long scenario")
    parser.add_argument("--long-clients", type=int, default=4)
    parser.add_argument("--text", default="data/kjv.txt", help="source of the long histories")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--port", type=int, default=18089, help="llama-server's port")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    slots = max(args.clients + [args.long_clients])

    print(f"# load benchmark: {os.cpu_count()} cores, {args.threads} threads each, max_tokens {args.max_tokens}")
    llama = Server(
        "llama-server",
        [args.llama_server, "-m", args.model, "--port", str(args.port), "-np", str(slots),
         "-c", str(slots * 8192), "-t", str(args.threads), "-tb", str(args.threads),
         "--cont-batching", "--jinja"],
        dict(os.environ), "/health", port_from_stdout=False,
    )
    try:
        long_texts = histories(args.text, args.long_clients, args.long_history, llama) if args.long_history else []
        theirs = bench_server(llama, "llama", args, long_texts)
    finally:
        llama.stop()

    data_dir = tempfile.mkdtemp(prefix="bench-load-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFINI_") and k != "DATABASE_URL"}
    env.update({
        "INFINI_ADDR": "127.0.0.1:0", "INFINI_DATA_DIR": data_dir, "INFINI_MODEL": args.model,
        "INFINI_THREADS": str(args.threads), "INFINI_MAX_RUNNING": str(slots),
        "INFINI_LOG": "warn", "INFINI_MODEL_NAME": "default",
    })
    ours = Server("infini", [args.infini, "serve"], env, "/ready", port_from_stdout=True)
    try:
        mine = bench_server(ours, "infini", args, long_texts)
    finally:
        ours.stop()

    print("\n| scenario | server | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | tokens/s ratio infini/llama |")
    print("|---|---|---|---|---|---|---|---|")
    for label in mine:
        for name, result in (("infini", mine[label]), ("llama-server", theirs[label])):
            ratio = mine[label]["tokens_per_s"] / theirs[label]["tokens_per_s"] if theirs[label]["tokens_per_s"] else float("nan")
            print(
                f"| {label} | {name} | {result['tokens_per_s']:.1f} | {result['ttft_p50']:.2f} s | "
                f"{result['ttft_p99']:.2f} s | {result['itl_p50'] * 1000:.0f} ms | {result['itl_p99'] * 1000:.0f} ms | "
                + (f"{ratio:.2f} |" if name == "infini" else "|")
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"infini": mine, "llama-server": theirs, "threads": args.threads,
                       "max_tokens": args.max_tokens}, f, indent=1)


if __name__ == "__main__":
    main()
