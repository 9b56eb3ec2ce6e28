#!/usr/bin/env python3
"""Drives the playground (`GET /`) in a real browser against a running `infini serve`.

Headless Debian Chromium through its chromedriver and Selenium (both installed by
scripts/browser_tools.sh; Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium, so
Selenium Manager never downloads anything). Each step asserts what a person would see, and a failed
step exits 1 after printing what failed, the browser's console log and the page's #error text.

    .venv/bin/python scripts/playground_browser.py --url http://127.0.0.1:8099 \
        [--key KEY] [--screenshots DIR] [--long-text FILE]

Steps: the page loads under its Content-Security-Policy with no console errors; a session is
created; a greeting sent with Enter streams token by token; a long text pushes tokens into the
archive (the timeline shows archive blocks); a question about the text's start lights the heat
strip and a block's text opens in the detail box; fork; export (the file downloads) and import;
every request the browser made went to the server's own origin. Keep the server's memory small
(e.g. INFINI_STM_LEN=128) so that the long text reaches the archive.
"""

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from urllib.parse import urlsplit

# Never let Selenium Manager look for a driver or a browser on the network.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_PAGES = ("chrome:", "chrome-untrusted:", "devtools:")
SECRET = "The secret password is PELICAN-42."


class StepFailed(Exception):
    """A step's assertion failed; the message says what was expected and what was seen."""


# ------------------------------------------------------------------------------------------------
# The long text


def long_text(words=1500, seed=7):
    """About `words` words of varied English sentences, opening with the secret."""
    rng = random.Random(seed)
    subjects = [
        "The old lighthouse keeper", "A young botanist", "The river pilot", "Our neighbour",
        "The museum guide", "A tired engineer", "The baker on the corner", "The night nurse",
        "A travelling musician", "The harbour master", "The village teacher", "A curious child",
    ]
    verbs = [
        "carefully repaired", "quietly described", "slowly painted", "proudly showed us",
        "patiently explained", "briefly mentioned", "happily photographed", "nervously counted",
        "eagerly studied", "calmly measured", "loudly praised", "secretly admired",
    ]
    objects = [
        "the broken wooden bridge", "a map of the northern islands", "the copper weather vane",
        "three jars of wild honey", "the clock above the station", "a basket of green apples",
        "the faded blue sailboat", "an album of winter photographs", "the garden behind the school",
        "a letter from the capital", "the lantern by the gate", "the recipe for barley bread",
    ]
    tails = [
        "before the storm arrived", "while the tide was low", "after the market closed",
        "during the long summer evening", "as the fog rolled in from the sea",
        "when the bells rang at noon", "under a sky full of gulls", "beside the frozen pond",
        "in the first light of morning", "despite the cold wind", "with great attention to detail",
        "on the last day of autumn",
    ]
    sentences = [SECRET, "Remember it, because you will be asked about it later."]
    count = sum(len(s.split()) for s in sentences)
    while count < words:
        sentence = (
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
            f"{rng.choice(tails)}."
        )
        sentences.append(sentence)
        count += len(sentence.split())
    paragraphs = [" ".join(sentences[i:i + 8]) for i in range(0, len(sentences), 8)]
    return "\n\n".join(paragraphs)


# ------------------------------------------------------------------------------------------------
# The browser


class Browser:
    """A headless Chromium with its console and performance logs kept as they are read."""

    def __init__(self, downloads):
        self.profile = tempfile.mkdtemp(prefix="infini-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--window-size=1280,900",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        options.add_experimental_option("prefs", {
            "download.default_directory": downloads,
            "download.prompt_for_download": False,
            "download.directory_upgrade": True,
            "safebrowsing.enabled": False,
        })
        self.driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER), options=options
        )
        self.console = []  # every console entry read so far
        self.network = []  # every performance (DevTools) message read so far

    def drain(self):
        """Moves the browser's pending log entries into self.console and self.network."""
        try:
            self.console.extend(self.driver.get_log("browser"))
            for entry in self.driver.get_log("performance"):
                self.network.append(json.loads(entry["message"])["message"])
        except WebDriverException:
            pass

    def quit(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


class Run:
    """The steps, sharing one browser."""

    def __init__(self, args, browser, downloads):
        self.args = args
        self.b = browser
        self.d = browser.driver
        self.downloads = downloads
        self.base = args.url.rstrip("/")
        self.origin = origin_of(self.base)
        self.shots = args.screenshots
        self.console_seen = 0  # console entries already checked

    # ---- helpers ----

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def el(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def page_error(self):
        """The page's visible #error text, or ''."""
        return self.js(
            "const e = document.getElementById('error');"
            "return e && !e.hidden ? e.textContent : '';"
        ) or ""

    def wait_for(self, what, check, timeout=30.0, interval=0.05, errors_fail=True):
        """Polls `check()` until it returns something truthy; an API error shown fails at once
        (unless `errors_fail` is false)."""
        end = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            error = self.page_error() if errors_fail else ""
            if error:
                raise StepFailed(f"the page showed an error while waiting for {what}: {error}")
            if time.monotonic() > end:
                raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def shot(self, name):
        if self.shots:
            self.d.save_screenshot(os.path.join(self.shots, name))

    def new_console_errors(self, ignore=()):
        """SEVERE console entries since the last check, less those matching `ignore`."""
        self.b.drain()
        fresh = self.b.console[self.console_seen:]
        self.console_seen = len(self.b.console)
        return [
            e for e in fresh
            if e.get("level") == "SEVERE" and not any(re.search(p, e.get("message", "")) for p in ignore)
        ]

    def assert_no_console_errors(self, when, ignore=()):
        errors = self.new_console_errors(ignore)
        if errors:
            lines = "\n".join(f"  {e['message']}" for e in errors)
            raise StepFailed(f"console errors {when}:\n{lines}")

    def session_ids(self):
        return self.js(
            "return [...document.querySelectorAll('#session-list li[data-id]')]"
            ".map(li => li.dataset.id);"
        )

    def selected_session(self):
        return self.js(
            "const li = document.querySelector('#session-list li.selected[data-id]');"
            "return li ? li.dataset.id : null;"
        )

    def set_field(self, css, value):
        field = self.el(css)
        field.clear()
        field.send_keys(str(value))

    def assistant_count(self):
        return self.js("return document.querySelectorAll('#chat .msg.assistant').length;")

    def last_reply(self):
        """(text length, done) of the last assistant message."""
        return self.js(
            "const all = document.querySelectorAll('#chat .msg.assistant');"
            "const m = all[all.length - 1];"
            "if (!m) return null;"
            "return [m.querySelector('.body').textContent.length, m.dataset.done === 'true'];"
        )

    def wait_reply(self, before, timeout):
        """Waits for the assistant message after `before` ones to finish; returns its text."""
        self.wait_for("the reply to start", lambda: self.assistant_count() > before, 10)
        self.wait_for("the reply to finish (data-done)", lambda: self.last_reply()[1], timeout)
        text = self.js(
            "const all = document.querySelectorAll('#chat .msg.assistant');"
            "return all[all.length - 1].querySelector('.body').textContent;"
        )
        if self.page_error():
            raise StepFailed(f"the reply ended with an error: {self.page_error()}")
        return text

    # ---- steps ----

    def step1_load(self):
        self.d.get(self.base + "/")
        self.wait_for("the page's script to run (the legend drawn)",
                      lambda: self.js("return document.querySelectorAll('#legend li').length;"), 15)
        ignore = ()
        if self.args.key:
            # A server with keys answers the page's first calls 401; the page then shows the field.
            self.wait_for("the API key field to appear",
                          lambda: self.el("#api-key").is_displayed(), 15)
            self.el("#api-key").send_keys(self.args.key)
            ignore = (r"status of 401",)
            self.wait_for("the key to be accepted (the model named, the 401 error gone)",
                          lambda: self.el("#model-name").text and not self.page_error(), 15,
                          errors_fail=False)
        else:
            self.wait_for("the model name", lambda: self.el("#model-name").text, 15)
        self.assert_no_console_errors("while loading the page", ignore)
        self.check_policy()
        return f"page loaded, model: {self.el('#model-name').text!r}; CSP holds"

    def check_policy(self):
        """The page came with its policy, and the browser enforces it: inline script is refused."""
        self.b.drain()
        policy = None
        for m in self.b.network:
            if m["method"] == "Network.responseReceived" and m["params"].get("type") == "Document":
                headers = {k.lower(): v for k, v in m["params"]["response"]["headers"].items()}
                policy = headers.get("content-security-policy")
        if not policy or "default-src 'none'" not in policy or "script-src 'self'" not in policy:
            raise StepFailed(f"the page's Content-Security-Policy is missing or weak: {policy!r}")
        ran = self.js(
            "window.__violations = 0;"
            "document.addEventListener('securitypolicyviolation', () => window.__violations++);"
            "const s = document.createElement('script');"
            "s.textContent = 'window.__inlineRan = true';"
            "document.head.appendChild(s); s.remove();"
            "return window.__inlineRan === true;"
        )
        if ran:
            raise StepFailed("an inline script ran: the browser does not enforce the page's CSP")
        self.wait_for("the CSP violation event", lambda: self.js("return window.__violations;"), 5)
        # The probe's own violation is logged as an error: leave it out of later checks.
        self.new_console_errors()

    def step2_session(self):
        before = set(self.session_ids())
        self.el("#new-session").click()
        self.wait_for("a new selected session in #session-list",
                      lambda: self.selected_session() and self.selected_session() not in before)
        self.session = self.selected_session()
        self.wait_for("the empty timeline", lambda: self.el("#timeline").text, 10)
        self.shot("01-session.png")
        return f"session {self.session} created and selected"

    def step3_greeting(self):
        # Shift+Enter is a new line, not a send.
        message = self.el("#message")
        message.send_keys("line one", Keys.SHIFT, Keys.ENTER, Keys.NULL, "line two")
        if "\n" not in message.get_attribute("value") or self.assistant_count():
            raise StepFailed("Shift+Enter did not make a new line (or it sent the message)")
        message.clear()
        self.set_field("#max-tokens", 24)
        self.set_field("#temperature", 0)
        before = self.assistant_count()
        message.send_keys("Hello! What is 2 + 2?", Keys.ENTER)
        self.wait_for("the reply to start", lambda: self.assistant_count() > before, 10)
        # Poll the reply as it streams: its length must grow at least three times before it ends.
        lengths, shot, end = [], False, time.monotonic() + 90
        while True:
            length, done = self.last_reply()
            if done:
                break
            if length and (not lengths or length > lengths[-1]):
                lengths.append(length)
            if len(lengths) >= 3 and not shot:
                self.shot("02-streaming.png")
                shot = True
            if self.page_error():
                raise StepFailed(f"the reply failed: {self.page_error()}")
            if time.monotonic() > end:
                raise StepFailed("the greeting's reply did not finish in 90 s")
            time.sleep(0.02)
        if len(lengths) < 3:
            raise StepFailed(
                f"the reply did not stream: its length was seen growing only {len(lengths)} "
                f"time(s) before data-done (lengths {lengths})"
            )
        text = self.wait_reply(before, 5)
        if not text.strip():
            raise StepFailed("the greeting's reply is empty")
        speed = self.wait_for("tokens/s in #reply-speed",
                              lambda: re.search(r"[\d.]+ tokens/s.*TTFT [\d.]+ s",
                                                self.el("#reply-speed").text) and
                              self.el("#reply-speed").text, 5)
        self.shot("03-reply.png")
        return f"reply streamed ({len(lengths)} growing reads: {lengths[:6]}…), {speed!r}"

    def step3b_api_error(self):
        """A request the API refuses: the page shows the API's own message."""
        self.set_field("#max-tokens", 100000)
        before = self.assistant_count()
        self.el("#message").send_keys("This asks for too many tokens.", Keys.ENTER)
        error = self.wait_for("the API's error in #error", self.page_error, 15, errors_fail=False)
        if "max_tokens" not in error:
            raise StepFailed(f"#error does not show the API's max_tokens message: {error!r}")
        self.wait_for("the send button back", lambda: self.el("#send").is_enabled(), 5,
                      errors_fail=False)
        if self.assistant_count() != before:
            raise StepFailed("a refused request left an assistant message in the chat")
        # The browser logs the refused request itself; anything else logged is a fault.
        self.assert_no_console_errors("while showing an API error",
                                      ignore=(r"chat/completions.*status of 400",))
        self.el("#error").click()  # dismisses it
        self.wait_for("#error to close", lambda: not self.page_error(), 5, errors_fail=False)
        return f"#error showed {error!r}"

    def step4_archive(self):
        text = open(self.args.long_text).read() if self.args.long_text else long_text()
        self.set_field("#max-tokens", 16)
        before = self.assistant_count()
        self.js(
            "const m = document.getElementById('message'); m.value = arguments[0];"
            "m.dispatchEvent(new Event('input'));", text)
        self.el("#send").click()
        started = time.monotonic()
        self.wait_reply(before, 150)
        took = time.monotonic() - started
        blocks = self.wait_for(
            "an archive block on #timeline",
            lambda: self.js("return document.querySelectorAll("
                            "'#timeline .span.tier-archive[data-block]').length;"), 10)
        tiers = self.js("return [...new Set([...document.querySelectorAll('#timeline .span')]"
                        ".map(s => [...s.classList].find(c => c.startsWith('tier-'))))];")
        seen = self.el("#memory-summary").text
        self.shot("04-archive.png")
        return (f"{len(text.split())} words fed and answered in {took:.1f} s; timeline tiers "
                f"{tiers}, {blocks} archive block(s); {seen}")

    def step5_heat(self):
        before = self.assistant_count()
        self.el("#message").send_keys("What is the secret password?", Keys.ENTER)
        answer = self.wait_reply(before, 90)
        most = self.wait_for(
            "a heat cell with data-selected > 0",
            lambda: self.js(
                "let best = null;"
                "for (const c of document.querySelectorAll('#heat .heat-cell[data-block]')) {"
                "  const n = Number(c.dataset.selected);"
                "  if (n > 0 && (!best || n > best[1])) best = [c.dataset.block, n];"
                "}"
                "return best;"), 10)
        block, selected = most
        self.el(f"#timeline .span.tier-archive[data-block='{block}']").click()
        detail = self.wait_for(
            "the block's text in #span-detail",
            lambda: self.js("const t = document.querySelector('#span-detail .detail-text');"
                            "return t && t.textContent.trim() ? t.textContent : null;"), 5)
        head = self.el("#span-detail .detail-head").text
        if f"block {block}" not in head:
            raise StepFailed(f"#span-detail does not name block {block}: {head!r}")
        cells = self.js("return document.querySelectorAll('#heat .heat-cell').length;")
        self.shot("05-heat.png")
        return (f"reply {answer.strip()[:60]!r}; block {block} selected {selected}x (of {cells} "
                f"blocks); its detail: {head!r}, {len(detail)} chars of text")

    def step6_fork(self):
        before = self.session_ids()
        source = self.selected_session()
        self.el("#fork-session").click()
        fork = self.wait_for(
            "the fork in #session-list, selected",
            lambda: len(self.session_ids()) == len(before) + 1
            and self.selected_session() not in before and self.selected_session())
        self.wait_for("the fork's conversation", lambda: self.assistant_count() >= 3, 10)
        self.fork = fork
        self.shot("06-fork.png")
        return f"forked {source} into {fork} (selected, {self.assistant_count()} replies shown)"

    def step7_export_import(self):
        session = self.selected_session()
        self.el("#export-session").click()
        path = self.wait_for("the export file in the download folder",
                             lambda: finished_download(self.downloads), 20)
        try:
            with open(path) as f:
                export = json.load(f)
        except (OSError, ValueError) as e:
            raise StepFailed(f"the downloaded export {path} is not JSON: {e}")
        transcript = export.get("transcript")
        if not isinstance(transcript, list) or not transcript:
            raise StepFailed(f"the export has no transcript: keys {sorted(export)}")
        if session not in os.path.basename(path):
            raise StepFailed(f"the export's file name {path} does not name session {session}")
        self.shot("07-export.png")
        # Import it back: a new session, selected, with the same conversation.
        before = self.session_ids()
        self.el("#import-file").send_keys(path)
        imported = self.wait_for(
            "the imported session in #session-list, selected",
            lambda: len(self.session_ids()) == len(before) + 1
            and self.selected_session() not in before and self.selected_session(), 60)
        self.wait_for("the imported conversation",
                      lambda: self.assistant_count() == len([m for m in transcript
                                                             if m.get("role") == "assistant"]), 10)
        return (f"exported {os.path.basename(path)} ({os.path.getsize(path):,} bytes, "
                f"{len(transcript)} messages) and imported it as {imported}")

    def step7b_stop(self):
        """Stop mid-reply: the stream ends at once, marked stopped, and the next turn works."""
        self.set_field("#max-tokens", 200)
        self.set_field("#temperature", 0.7)
        before = self.assistant_count()
        self.el("#message").send_keys(
            "Count from 1 to 100, separated by commas, then tell a long story.", Keys.ENTER)
        self.wait_for("the reply to start", lambda: self.assistant_count() > before, 10)
        self.wait_for("three tokens of the reply", lambda: self.last_reply()[0] >= 3, 60)
        self.el("#stop").click()
        self.wait_for("the stopped reply to end", lambda: self.last_reply()[1], 10)
        outcome = self.js("const all = document.querySelectorAll('#chat .msg.assistant');"
                          "return all[all.length - 1].dataset.outcome;")
        length = self.last_reply()[0]
        if outcome != "stopped":
            raise StepFailed(f"the reply ended as {outcome!r}, not stopped (length {length})")
        if self.el("#stop").is_enabled() or not self.el("#send").is_enabled():
            raise StepFailed("after stop, #stop is still enabled or #send is not")
        # The next turn works (the server stored the partial turn and let the session go).
        self.set_field("#max-tokens", 8)
        time.sleep(0.5)
        self.el("#message").send_keys("Thanks.", Keys.ENTER)
        self.wait_reply(before + 1, 60)
        return f"stopped after {length} characters; the next turn answered"

    def step7c_delete(self):
        """Delete asks twice; the session leaves the list and another one is selected."""
        victim = self.selected_session()
        before = self.session_ids()
        self.el("#delete-session").click()
        armed = self.el("#delete-session").text
        if victim not in self.session_ids():
            raise StepFailed("the first click on #delete-session deleted without asking")
        self.el("#delete-session").click()
        self.wait_for("the session to leave #session-list",
                      lambda: victim not in self.session_ids()
                      and len(self.session_ids()) == len(before) - 1)
        now = self.wait_for("another session selected", self.selected_session, 10)
        return f"{armed!r} then deleted {victim}; now {now} is selected"

    def step8_network(self):
        self.b.drain()
        checked, internal = [], 0
        for m in self.b.network:
            if m["method"] != "Network.requestWillBeSent":
                continue
            url = m["params"]["request"]["url"]
            if url.startswith(("data:", "blob:")):
                continue
            # The browser's own pages (the first tab's new-tab page) load chrome:// resources;
            # they are not the playground's requests.
            if m["params"].get("documentURL", "").startswith(BROWSER_PAGES):
                internal += 1
                continue
            checked.append(url)
        foreign = sorted({u for u in checked if origin_of(u) != self.origin})
        if foreign:
            raise StepFailed("requests to other origins:\n" + "\n".join(f"  {u}" for u in foreign))
        if not checked:
            raise StepFailed("the performance log recorded no requests")
        return (f"{len(checked)} requests checked, all to {self.origin} "
                f"({internal} of the browser's own chrome:// pages left out)")

    def final_checks(self):
        self.assert_no_console_errors("during the run")
        # The final state (docs/playground.png): the first session again, its most read block open.
        if self.session in self.session_ids():
            self.el(f"#session-list li[data-id='{self.session}']").click()
            block = self.wait_for(
                "the first session's heat strip",
                lambda: self.selected_session() == self.session and self.js(
                    "let best = null, most = 0;"
                    "for (const c of document.querySelectorAll('#heat .heat-cell[data-block]')) {"
                    "  const n = Number(c.dataset.selected);"
                    "  if (n > most) { most = n; best = c.dataset.block; }"
                    "}"
                    "return best;"), 10)
            self.el(f"#timeline .span.tier-archive[data-block='{block}']").click()
            time.sleep(0.3)
        self.shot("final.png")
        # Phone width: one column, nothing wider than the screen.
        self.d.set_window_size(390, 844)
        time.sleep(0.5)
        overflow = self.js("return document.documentElement.scrollWidth - "
                           "document.documentElement.clientWidth;")
        self.shot("phone.png")
        self.js("document.getElementById('timeline-scroll').scrollIntoView();")
        time.sleep(0.2)
        self.shot("phone-memory.png")
        self.d.set_window_size(1280, 900)
        if overflow > 1:
            raise StepFailed(f"at phone width the page is {overflow}px wider than the screen")
        return "no console errors; at 390px wide the page fits the screen"


def origin_of(url):
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def finished_download(folder):
    """The finished .json download in `folder`, if any."""
    for name in os.listdir(folder):
        if name.endswith(".json"):
            return os.path.join(folder, name)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8099")
    parser.add_argument("--key", help="an API key the server requires")
    parser.add_argument("--screenshots", help="folder for a PNG per state (01-session.png … "
                        "07-export.png, final.png, phone.png, phone-memory.png)")
    parser.add_argument("--long-text", help="text file fed to push tokens into the archive")
    args = parser.parse_args()
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)

    started = time.monotonic()
    downloads = tempfile.mkdtemp(prefix="infini-downloads-")
    browser = None
    run = None
    step = "starting Chromium"
    try:
        browser = Browser(downloads)
        run = Run(args, browser, downloads)
        steps = [
            ("1 page", run.step1_load),
            ("2 session", run.step2_session),
            ("3 streaming", run.step3_greeting),
            ("3b api error", run.step3b_api_error),
            ("4 archive", run.step4_archive),
            ("5 heat", run.step5_heat),
            ("6 fork", run.step6_fork),
            ("7 export+import", run.step7_export_import),
            ("7b stop", run.step7b_stop),
            ("7c delete", run.step7c_delete),
            ("8 network", run.step8_network),
            ("final", run.final_checks),
        ]
        for step, action in steps:
            t0 = time.monotonic()
            note = action()
            print(f"ok  {step} ({time.monotonic() - t0:.1f} s): {note}", flush=True)
    except (StepFailed, WebDriverException, AssertionError, OSError) as e:
        # A WebDriverException's str() carries the driver's native stack trace: keep its message.
        message = e.msg if isinstance(e, WebDriverException) and e.msg else e
        print(f"FAIL {step}: {type(e).__name__}: {message}", file=sys.stderr)
        if run is not None:
            report(run)
        return 1
    finally:
        if browser is not None:
            browser.quit()
        shutil.rmtree(downloads, ignore_errors=True)
    print(f"playground: all steps passed in {time.monotonic() - started:.1f} s")
    return 0


def report(run):
    """What the browser saw: the console log, the page's #error, a last screenshot."""
    try:
        run.shot("final.png")
    except WebDriverException:
        pass
    try:
        run.b.drain()
        print("browser console:", file=sys.stderr)
        for e in run.b.console:
            print(f"  [{e.get('level')}] {e.get('message')}", file=sys.stderr)
        print(f"page #error: {run.page_error()!r}", file=sys.stderr)
    except WebDriverException as e:
        print(f"(could not read the page: {e})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
