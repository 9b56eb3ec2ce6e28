#!/usr/bin/env python3
"""The official `openai` Python client, unchanged, against a real `infini serve`.

Starts the server (the newer of the release and debug binaries) on a free port with a throwaway data
folder, unless --base-url names a running one; then checks, with the SDK's own types: /v1/models,
chat non-streaming and streaming (with stream_options.include_usage), text completions both ways,
a two-turn session continued through `extra_body={"session_id": ...}`, and that errors arrive as
the SDK's exceptions (400 BadRequestError naming the field, 404 NotFoundError). Exits non-zero on
the first failed check. Needs `pip install openai` (make demo-client installs it into .venv).
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent


def start_server(binary: Path, data_dir: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFINI_") and k != "DATABASE_URL"}
    env.update(INFINI_ADDR="127.0.0.1:0", INFINI_DATA_DIR=data_dir, INFINI_API_KEYS="sdk:sdk-key",
               INFINI_MODEL_NAME="smollm2", INFINI_LOG="warn")
    server = subprocess.Popen([str(binary), "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline().strip()
    prefix = "infini listening on "
    if not line.startswith(prefix):
        server.kill()
        sys.exit(f"the server did not start: {line!r}")
    base = line[len(prefix):]
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/ready") as reply:
                if reply.status == 200:
                    return server, base + "/v1"
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit("the server was not ready within 120 s")


def check(name: str, condition: bool, detail: object = "") -> None:
    print(f"{'ok  ' if condition else 'FAIL'} {name}" + (f": {detail}" if detail != "" else ""))
    if not condition:
        sys.exit(1)


def run_checks(client: openai.OpenAI, model: str) -> None:
    models = client.models.list()
    check("models.list names the served model", [m.id for m in models.data] == [model], [m.id for m in models.data])

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    check("chat.completions.create", bool(text) and reply.usage.completion_tokens <= 12, repr(text))

    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("streaming chat equals non-streaming under greedy", "".join(parts) == text, repr("".join(parts)))
    check("stream ends with usage and a finish reason", usage is not None and usage.total_tokens == reply.usage.total_tokens and finish in ("stop", "length"), (usage, finish))

    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
    check("completions.create", "Paris" in completion.choices[0].text, repr(completion.choices[0].text))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if c.choices)
    check("streaming completions", streamed == completion.choices[0].text, repr(streamed))

    session = client.post("/sessions", cast_to=object, body={})
    sid = session["id"]
    client.chat.completions.create(model=model, max_tokens=12, temperature=0, extra_body={"session_id": sid},
                                   messages=[{"role": "user", "content": "My name is Zorblax."}])
    recall = client.chat.completions.create(model=model, max_tokens=12, temperature=0, extra_body={"session_id": sid},
                                            messages=[{"role": "user", "content": "What is my name?"}])
    answer = recall.choices[0].message.content
    check("a session's second turn (only the new message sent) recalls the first", "Zorblax" in answer, repr(answer))

    try:
        client.chat.completions.create(model=model, messages=messages, temperature=5)
        check("temperature 5 is refused", False)
    except openai.BadRequestError as error:
        check("temperature 5 is a BadRequestError naming the field", error.body.get("param") == "temperature", error.body)
    try:
        client.chat.completions.create(model=model, messages=messages, extra_body={"session_id": "sess_nope"})
        check("an unknown session is refused", False)
    except openai.NotFoundError as error:
        check("an unknown session is a NotFoundError", error.body.get("code") == "session_not_found", error.body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running server's /v1 URL (default: start one)")
    parser.add_argument("--binary", help="the infini binary to start (default: the newer of target/release and target/debug)")
    parser.add_argument("--api-key", default="sdk-key")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    server = None
    with tempfile.TemporaryDirectory() as data_dir:
        base_url = args.base_url
        if base_url is None:
            built = [p for p in (ROOT / "target/release/infini", ROOT / "target/debug/infini") if p.exists()]
            binary = Path(args.binary) if args.binary else max(built, key=lambda p: p.stat().st_mtime, default=None)
            if binary is None:
                sys.exit("no infini binary: run `cargo build --release` first")
            server, base_url = start_server(binary, data_dir)
        print(f"openai {openai.__version__} against {base_url}")
        try:
            run_checks(openai.OpenAI(base_url=base_url, api_key=args.api_key, max_retries=0), args.model)
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                code = server.wait(timeout=60)
                print(f"server exited with {code} after SIGTERM")
    print("all checks passed")


if __name__ == "__main__":
    main()
