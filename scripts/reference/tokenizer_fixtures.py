"""Writes the tokenizer and chat-template fixtures that tests/tokenizer_reference.rs compares the
Rust tokenizer against, using Hugging Face transformers' own GGUF tokenizer loader on the default
model as the reference:

  tests/fixtures/tokenizer_cases.jsonl     one {"text", "ids"} per line, a few thousand strings
  tests/fixtures/chat_template_cases.json  conversations with their rendered prompt and its ids

transformers maps `tokenizer.ggml.pre` to a split rule for some names but has none for `smollm`,
so it falls back to GPT-2's ByteLevel split. SmolLM2's own tokenizer.json (and llama.cpp's `smollm`
rule) split every digit first; the script sets that pre-tokeniser on the loaded tokenizer and
counts how many strings the two variants tokenise differently (printed, and kept in the fixture
header). When llama-cpp-python is importable it also tokenises every string with llama.cpp, an
independent implementation, and reports the agreement.

Run from the repository root (installs transformers and gguf into .venv if missing):
    .venv/bin/python scripts/reference/tokenizer_fixtures.py
"""

import importlib.metadata
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

for module, requirement in [("transformers", "transformers==5.24.0"), ("gguf", "gguf==0.19.0")]:
    if importlib.util.find_spec(module) is None:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", requirement])

from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

MODEL_DIR = Path("models")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CASES = Path("tests/fixtures/tokenizer_cases.jsonl")
CHATS = Path("tests/fixtures/chat_template_cases.json")
SEED = 20261127

WORDS = (
    "the of and to in is you that it he was for on are as with his they I at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up other "
    "about out many then them these so some her would make like him into time has look two more write go see number "
    "no way could people my than first water been call who oil its now find long down day did get come made may part "
    "memory attention transformer continuous signal basis function ridge regression kernel sticky memories"
).split()

SNIPPETS = [
    # Python
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "import numpy as np\n\nx = np.linspace(0, 1, 100)\nprint(f\"{x.mean():.3f}\")  # mean\n",
    "class Foo(Bar):\n\tdef __init__(self, *args, **kwargs):\n\t\tsuper().__init__(*args, **kwargs)\n",
    "with open('data.txt') as f:\n    for line in f:\n        print(line.rstrip())\n",
    # Rust
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "impl<'a, T: Clone + Send> Iterator for Iter<'a, T> {\n    type Item = &'a T;\n}\n",
    "#[derive(Debug, Clone)]\npub struct Config { pub lr: f64, pub steps: usize }\n",
    "match x {\n    Some(ref y) if *y > 0 => y,\n    _ => &0,\n}\n",
    # JavaScript / TypeScript
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`);\n",
    "async function load(url: string): Promise<void> {\n  const r = await fetch(url);\n  if (!r.ok) throw new Error(r.statusText);\n}\n",
    # C / C++
    "#include <stdio.h>\nint main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "template <typename T>\nstd::vector<T> twice(const std::vector<T>& v) { return {v.begin(), v.end()}; }\n",
    # Go, Java, shell, SQL, HTML, JSON, YAML, LaTeX
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "public static void main(String[] args) {\n    System.out.println(\"Hello\");\n}\n",
    "#!/bin/bash\nfor f in *.txt; do\n  echo \"$f\" | tr a-z A-Z >> out.log 2>&1\ndone\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE 'A%' ORDER BY id DESC LIMIT 10;",
    "<div class=\"row\"><a href=\"/x?y=1&amp;z=2\">link</a></div>\n<!-- comment -->",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\\n\"}}",
    "services:\n  web:\n    image: \"nginx:1.25\"\n    ports:\n      - \"8080:80\"\n",
    "\\begin{equation}\n  \\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2}\n\\end{equation}",
]

UNICODE = [
    "Ça va? Très bien, merci — à bientôt!",
    "Größe, Straße, Äpfel und Öl",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "Ελληνικά: καλημέρα κόσμε",
    "Русский текст: привет, мир!",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "中文：你好，世界！今天天气很好。",
    "日本語：こんにちは世界。カタカナとひらがな。",
    "한국어: 안녕하세요 세계",
    "Tiếng Việt: Xin chào thế giới",
    "emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️‍🔥",
    "math: ∀x∈ℝ, ∑ᵢ xᵢ² ≥ 0; ∞ ≠ ∅; α→β ⇒ γ",
    "combining: e\u0301 a\u0308 n\u0303 (decomposed) vs é ä ñ",
    "zero width: a\u200bb\u200cc\u200dd\ufeffe",
    "box: ┌─┐│ │└─┘ ░▒▓█",
    "currency: $5 €10 £3 ¥1000 ₹50 ₿0.01",
    "quotes: “double” ‘single’ «guillemets» „low“",
]

SPECIAL_IN_TEXT = [
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "before<|endoftext|>after",
    "<|im_start|><|im_end|><|endoftext|>",
    "a <|im_start|> b <|im_end|> c",
    "<|im_start",
    "<|im_end|x",
    "<repo_name>infini<file_sep>src/main.rs<filename>x",
    "text with < | im_start | > spaced out",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n",
    "<empty_output>",
]


def random_sentence(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 25))]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    text = " ".join(words)
    return text + rng.choice(["", ".", "!", "?", "...", ",", ";", ":"])


def random_number(rng):
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randint(1, 30)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}"
    if kind == 2:
        return f"{rng.uniform(-1, 1):e}"
    if kind == 3:
        return f"+1 ({rng.randrange(100, 999)}) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
    if kind == 4:
        return f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}"
    if kind == 5:
        return " ".join(str(rng.randrange(1000)) for _ in range(rng.randint(2, 12)))
    return f"{rng.randrange(10**6):,} items at {rng.randrange(100)}.{rng.randrange(100):02d}% ({rng.randrange(1, 9)}/{rng.randrange(1, 9)})"


def random_whitespace(rng):
    pieces = []
    for _ in range(rng.randint(1, 8)):
        pieces.append(rng.choice(["", "x", "word", "A", "1", ".", "é", "中"]))
        pieces.append("".join(rng.choice([" ", "  ", "\t", "\n", "\r\n", "\n\n", "   ", "\u00a0", "\u3000"]) for _ in range(rng.randint(1, 5))))
    return "".join(pieces)


def random_contractions(rng):
    subject = rng.choice(["I", "you", "we", "they", "it", "she", "He", "THEY", "John"])
    suffix = rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "’s", "'"])
    return f"{subject}{suffix} {rng.choice(WORDS)}{rng.choice(['', ' ', '!'])}"


def random_mix(rng, pools):
    pool = "".join(pools)
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 60)))


def random_code(rng):
    snippet = rng.choice(SNIPPETS)
    if rng.random() < 0.5:
        lines = snippet.splitlines(keepends=True)
        start = rng.randrange(len(lines))
        snippet = "".join(lines[start : start + rng.randint(1, len(lines))])
    if rng.random() < 0.3:
        snippet = snippet.replace("    ", "\t")
    return snippet


def cases():
    rng = random.Random(SEED)
    fixed = ["", " ", "  ", "\n", "\t", "a", "A", "0", "é", "中", "😀", " a", "a ", "hello world", "Hello, World!"]
    fixed += SNIPPETS + UNICODE + SPECIAL_IN_TEXT
    chars = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "éèêëàâäôöûüçñß",
        "中文字日本語한국어",
        "😀👍🏽❤️‍🔥🇫🇷",
        "∀∑∞≠→αβγ",
        "\u200b\u00a0\u3000",
    ]
    generators = [
        (random_sentence, 700),
        (random_number, 500),
        (random_whitespace, 400),
        (random_contractions, 200),
        (random_code, 300),
        (lambda r: r.choice(UNICODE) + (" " + random_sentence(r) if r.random() < 0.5 else ""), 200),
        (lambda r: random_sentence(r) + r.choice(SPECIAL_IN_TEXT) + random_number(r), 150),
        (lambda r: random_mix(r, chars), 600),
    ]
    out = list(fixed)
    for generate, count in generators:
        out += [generate(rng) for _ in range(count)]
    return out


def conversations():
    return [
        ([{"role": "user", "content": "Hi"}], True),
        ([{"role": "user", "content": "Hi"}], False),
        ([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the treasure?"}], True),
        (
            [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3×3?"},
            ],
            True,
        ),
        ([{"role": "user", "content": "  leading and trailing spaces  \n\n"}], True),
        ([{"role": "user", "content": "中文 😀 <b>html</b> {% raw %} {{ not a template }}"}], True),
        ([{"role": "system", "content": ""}, {"role": "user", "content": ""}], True),
        (
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "def f(x):\n    return x\n"},
                {"role": "assistant", "content": "It returns x."},
                {"role": "user", "content": "Thanks!"},
                {"role": "assistant", "content": "You're welcome."},
            ],
            False,
        ),
    ]


def smollm_pre_tokenizer():
    """SmolLM2's tokenizer.json pre-tokeniser (llama.cpp's `smollm`)."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )


def llama_cpp_ids(texts):
    """Token ids from llama.cpp for each text, or None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    llm = Llama(model_path=str(MODEL_DIR / MODEL_FILE), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def main():
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_FILE)
    texts = cases()
    as_loaded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    tokenizer.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    reference = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    split_differences = sum(a != b for a, b in zip(as_loaded, reference))
    print(f"{len(texts)} strings; transformers' default GGUF split differs from SmolLM2's on {split_differences}")

    llama = llama_cpp_ids(texts)
    llama_note = "llama-cpp-python not installed"
    if llama is not None:
        disagree = [i for i, (a, b) in enumerate(zip(llama, reference)) if a != b]
        llama_note = f"llama.cpp agrees on {len(texts) - len(disagree)} of {len(texts)}"
        for i in disagree[:5]:
            print(f"  llama.cpp differs on {texts[i]!r}: {llama[i]} vs {reference[i]}")
    print(llama_note)

    header = {
        "reference": f"transformers {importlib.metadata.version('transformers')} AutoTokenizer(gguf_file) "
        f"with SmolLM2's pre-tokeniser, tokenizers {importlib.metadata.version('tokenizers')}",
        "seed": SEED,
        "count": len(texts),
        "differ_with_transformers_default_split": split_differences,
        "llama_cpp": llama_note,
    }
    lines = [json.dumps(header, ensure_ascii=False)]
    lines += [json.dumps({"text": t, "ids": ids}, ensure_ascii=False) for t, ids in zip(texts, reference)]
    CASES.parent.mkdir(parents=True, exist_ok=True)
    CASES.write_text("\n".join(lines) + "\n", encoding="utf-8")

    chats = []
    for messages, add_generation_prompt in conversations():
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        chats.append(
            {
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "rendered": rendered,
                "ids": tokenizer.encode(rendered, add_special_tokens=False),
            }
        )
    CHATS.write_text(json.dumps(chats, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {CASES} ({CASES.stat().st_size} bytes) and {CHATS} ({len(chats)} conversations)")


if __name__ == "__main__":
    main()
