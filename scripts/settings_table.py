#!/usr/bin/env python3
"""The settings table of docs/OPERATIONS.md, generated from `infini serve --help` so that it is exact.

    scripts/settings_table.py --binary target/debug/infini                 # print the table
    scripts/settings_table.py --binary target/debug/infini --update docs/OPERATIONS.md
    scripts/settings_table.py --binary target/debug/infini --check docs/OPERATIONS.md

--update rewrites the lines between the `<!-- settings:begin -->` and `<!-- settings:end -->`
markers; --check exits 1 when they differ from what the binary prints (tests/operations_doc.rs).
The help is read with every INFINI_* variable and DATABASE_URL unset, since clap shows set values.
"""

import argparse
import os
import re
import subprocess
import sys

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
OPTION = re.compile(r"^\s{2,6}(?:-\w, )?(--[a-z0-9-]+)( <[A-Z0-9_]+>)?\s*$")


def help_text(binary):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("INFINI_") or k == "DATABASE_URL")}
    return subprocess.run([binary, "serve", "--help"], env=env, check=True, capture_output=True,
                          text=True).stdout


def options(text):
    """(flag, takes a value, description) for each option, in the order --help lists them."""
    found = []
    for line in text.splitlines():
        match = OPTION.match(line)
        if match:
            found.append((match.group(1), bool(match.group(2)), []))
        elif found and line.startswith(" ") and line.strip():
            found[-1][2].append(line.strip())
    return [(flag, value, " ".join(lines)) for flag, value, lines in found if flag != "--help"]


def take(pattern, text):
    match = re.search(pattern, text)
    if not match:
        return None, text
    return match.group(1), (text[:match.start()] + text[match.end():]).strip()


def table(text):
    rows = ["| flag | variable | default | what |", "|---|---|---|---|"]
    for flag, takes_value, description in options(text):
        env, description = take(r"\s*\[env: ([A-Z0-9_]+)=?[^\]]*\]", description)
        default, description = take(r"\s*\[default: ([^\]]*)\]", description)
        values, description = take(r"\s*\[possible values: ([^\]]*)\]", description)
        if env is None:
            sys.exit(f"settings_table: {flag} has no environment variable in --help")
        if default is None and not takes_value:
            default = "off"
        shown = f"`{default}`" if default is not None else "—"
        if values:
            description += f" (one of: {values})"
        description = description.replace("|", "\\|")
        rows.append(f"| `{flag}` | `{env}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"


def splice(document, generated):
    if BEGIN not in document or END not in document:
        sys.exit(f"settings_table: the document has no {BEGIN} … {END} block")
    head, rest = document.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--update", metavar="DOC")
    mode.add_argument("--check", metavar="DOC")
    args = parser.parse_args()
    generated = table(help_text(args.binary))
    if args.update:
        with open(args.update) as f:
            document = f.read()
        with open(args.update, "w") as f:
            f.write(splice(document, generated))
    elif args.check:
        with open(args.check) as f:
            document = f.read()
        if splice(document, generated) != document:
            sys.exit(f"{args.check}'s settings table is out of date: run "
                     f"scripts/settings_table.py --binary {args.binary} --update {args.check}")
    else:
        sys.stdout.write(generated)


if __name__ == "__main__":
    main()
