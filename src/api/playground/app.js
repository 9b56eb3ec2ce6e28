// The infini playground: sessions, a streaming chat and a drawing of the session's memory.
// Plain ES2020, no framework, no build step. The page's Content-Security-Policy forbids inline
// script and style attributes, so everything is wired here, and styles change only through the
// CSSOM (element.style.x = …) or classes defined in app.css. It talks to the server only through
// the public API (/v1/…), with the API key from the header field when one is set.
'use strict';

const $ = (id) => document.getElementById(id);

/** The memory tiers in timeline order (oldest tokens first), with what each one is. */
const TIERS = [
  ['sinks', 'sinks', 'the first tokens, kept exact'],
  ['signal', 'signal', 'older tokens, absorbed into the continuous ∞-former signal'],
  ['dropped', 'dropped', 'let go (past the archive budget, signal off)'],
  ['archive', 'archive', 'exact blocks, read when a query picks them'],
  ['stm', 'STM', 'the last tokens: the short-term window, exact'],
];
const TIER_LABEL = Object.fromEntries(TIERS.map(([tier, label]) => [tier, label]));
const TIER_WHAT = Object.fromEntries(TIERS.map(([tier, , what]) => [tier, what]));

const MIN_SPAN_PX = 8; // so that every span, however short, stays visible and clickable
const KEY_STORE = 'infini.apiKey';
const SESSION_STORE = 'infini.session';

const state = {
  key: localStorage.getItem(KEY_STORE) || '',
  model: null,
  sessions: [], // oldest first, as the API lists them
  current: null, // the selected session's id
  controller: null, // the AbortController of the reply being streamed
  memory: null, // the last memory map drawn
  activeSpan: null, // index of the span whose detail is shown
};

/** What identifies a span across refreshes: its block number, or its tier. */
function spanKey(span) {
  return span.block !== null && span.block !== undefined ? `block ${span.block}` : span.tier;
}

// ---------------------------------------------------------------------------------------------
// The API

/** An error the API answered (its `error.message`), or a failure to reach it. */
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** fetch() with the API key, JSON body and the API's error shape turned into an ApiError. */
async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const payload = body === undefined || typeof body === 'string' ? body : JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(`cannot reach the server: ${e.message}`, 0);
  }
  if (!res.ok) throw await errorOf(res);
  return res;
}

/** The API's own message for a failed response (`{"error": {"message": …}}`). */
async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON: keep the status line
  }
  if (res.status === 401) revealKeyField(true);
  return new ApiError(message, res.status);
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// ---------------------------------------------------------------------------------------------
// Errors

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

/** Runs an action, showing what it throws in the error box. */
async function guarded(action) {
  try {
    clearError();
    await action();
  } catch (e) {
    showError(e.message || String(e));
  }
}

// ---------------------------------------------------------------------------------------------
// API key

/** Shows the key field (a server with keys answered 401, or a key is stored). */
function revealKeyField(needed) {
  $('api-key-box').hidden = false;
  $('api-key-box').classList.toggle('needed', needed && !state.key);
  if (needed && !state.key) $('api-key').focus();
}

let keyTimer = null;

/** Another key sees other sessions: forget this key's, then load that key's. */
async function reloadForKey() {
  if (state.controller) state.controller.abort();
  state.sessions = [];
  state.current = null;
  renderSessions();
  renderMessages([]);
  renderMemory(null);
  await loadEverything();
}
function onKeyInput() {
  state.key = $('api-key').value.trim();
  if (state.key) localStorage.setItem(KEY_STORE, state.key);
  else localStorage.removeItem(KEY_STORE);
  $('api-key-box').classList.remove('needed');
  clearTimeout(keyTimer);
  keyTimer = setTimeout(() => guarded(reloadForKey), 400);
}

// ---------------------------------------------------------------------------------------------
// Sessions

async function loadModel() {
  const models = await apiJson('/v1/models');
  state.model = models.data && models.data.length ? models.data[0].id : null;
  $('model-name').textContent = state.model ? `model ${state.model}` : '';
}

/** Every page of the caller's sessions. */
async function loadSessions() {
  const all = [];
  let after = null;
  for (let page = 0; page < 50; page++) {
    const query = after ? `?limit=100&after=${encodeURIComponent(after)}` : '?limit=100';
    const list = await apiJson(`/v1/sessions${query}`);
    all.push(...list.data);
    if (!list.has_more || !list.last_id) break;
    after = list.last_id;
  }
  state.sessions = all;
  renderSessions();
}

/** Short label of a session: when it was made and how much it holds. */
function sessionLabel(s) {
  const when = new Date(s.created_at * 1000);
  const time = when.toLocaleString([], {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  const messages = `${s.message_count} message${s.message_count === 1 ? '' : 's'}`;
  return [time, `${messages} · ${fmtInt(s.tokens_seen)} tokens`, s.id];
}

/** The session list, newest first, the selected one marked. */
function renderSessions() {
  const list = $('session-list');
  list.replaceChildren();
  for (const s of [...state.sessions].reverse()) {
    const [time, counts, id] = sessionLabel(s);
    const item = document.createElement('li');
    item.dataset.id = s.id;
    item.className = 'session-item';
    if (s.id === state.current) {
      item.classList.add('selected');
      item.setAttribute('aria-current', 'true');
    }
    const button = document.createElement('button');
    button.type = 'button';
    button.append(textEl('strong', time), textEl('span', counts), textEl('code', id));
    button.addEventListener('click', () => guarded(() => selectSession(s.id)));
    item.append(button);
    list.append(item);
  }
  if (!state.sessions.length) list.append(textEl('li', 'No sessions yet.', 'muted empty'));
  const selected = Boolean(state.current);
  for (const id of ['fork-session', 'export-session', 'delete-session']) $(id).disabled = !selected;
}

/** Replaces (or adds) one session in the list. */
function upsertSession(session) {
  const at = state.sessions.findIndex((s) => s.id === session.id);
  if (at >= 0) state.sessions[at] = session;
  else state.sessions.push(session);
}

/** Selects a session: its messages in the chat, its memory in the panel. */
async function selectSession(id) {
  if (state.controller) state.controller.abort();
  // The speed shown is of a reply in this view; another session has not had one yet.
  if (id !== state.current) $('reply-speed').textContent = 'Send a message to time a reply.';
  state.current = id;
  localStorage.setItem(SESSION_STORE, id);
  disarmDelete();
  renderSessions();
  const session = await apiJson(`/v1/sessions/${encodeURIComponent(id)}`);
  if (state.current !== id) return; // another one was picked meanwhile
  upsertSession(withoutMessages(session));
  renderSessions();
  renderMessages(session.messages || []);
  await loadMemory(id);
}

function withoutMessages(session) {
  const { messages, ...rest } = session;
  return rest;
}

/** No session selected: an empty chat and memory panel. */
function deselect() {
  state.current = null;
  localStorage.removeItem(SESSION_STORE);
  renderSessions();
  renderMessages([]);
  renderMemory(null);
}

async function createSession() {
  const session = await apiJson('/v1/sessions', { method: 'POST', body: {} });
  upsertSession(session);
  await selectSession(session.id);
  $('message').focus();
  return session;
}

async function forkSession() {
  if (!state.current) return;
  const session = await apiJson(`/v1/sessions/${encodeURIComponent(state.current)}/fork`, {
    method: 'POST',
  });
  upsertSession(session);
  await selectSession(session.id);
}

// Delete asks twice: the first click arms the button for a few seconds, the second deletes.
let deleteTimer = null;
function disarmDelete() {
  clearTimeout(deleteTimer);
  const button = $('delete-session');
  delete button.dataset.armed;
  button.textContent = 'Delete';
}

async function deleteSession() {
  const button = $('delete-session');
  if (!state.current) return;
  if (!button.dataset.armed) {
    button.dataset.armed = 'true';
    button.textContent = 'Really delete?';
    deleteTimer = setTimeout(disarmDelete, 4000);
    return;
  }
  disarmDelete();
  const id = state.current;
  await api(`/v1/sessions/${encodeURIComponent(id)}`, { method: 'DELETE' });
  state.sessions = state.sessions.filter((s) => s.id !== id);
  const next = state.sessions[state.sessions.length - 1];
  if (next) await selectSession(next.id);
  else deselect();
}

/** Downloads the session's export file through a temporary Blob URL. */
async function exportSession() {
  if (!state.current) return;
  const id = state.current;
  const res = await api(`/v1/sessions/${encodeURIComponent(id)}/export`);
  const blob = new Blob([await res.text()], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = `${id}.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** Imports an export file chosen in the file field as a new session. */
async function importSession() {
  const input = $('import-file');
  const file = input.files && input.files[0];
  if (!file) return;
  try {
    const text = await file.text();
    const session = await apiJson('/v1/sessions/import', { method: 'POST', body: text });
    upsertSession(session);
    await selectSession(session.id);
  } finally {
    input.value = ''; // so that choosing the same file again fires `change`
  }
}

// ---------------------------------------------------------------------------------------------
// Chat

/** An element with text (never HTML: replies and transcripts are shown as typed). */
function textEl(tag, text, className) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

/** Adds one message to the chat and returns its body element. */
function addMessage(role, content, done = true) {
  $('chat-empty').hidden = true;
  const message = document.createElement('div');
  message.className = `msg ${role}`;
  if (done) message.dataset.done = 'true';
  const body = textEl('div', content, 'body');
  message.append(textEl('div', role, 'role'), body);
  $('chat').append(message);
  scrollChat();
  return message;
}

function renderMessages(messages) {
  for (const el of $('chat').querySelectorAll('.msg')) el.remove();
  $('chat-empty').hidden = messages.length > 0;
  $('chat-empty').textContent = state.current
    ? 'No messages yet: say something below.'
    : 'Create or pick a session, then say something.';
  for (const m of messages) addMessage(m.role, m.content);
}

function scrollChat() {
  const chat = $('chat');
  chat.scrollTop = chat.scrollHeight;
}

function setStreaming(on) {
  $('send').disabled = on;
  $('stop').disabled = !on;
  document.body.classList.toggle('streaming', on);
}

/** A number field's value within [min, max], or the fallback when empty or not a number. */
function numberField(id, fallback, min, max) {
  const value = Number($(id).value);
  if ($(id).value.trim() === '' || !Number.isFinite(value)) return fallback;
  return Math.min(max, Math.max(min, value));
}

/** Sends the composer's text as the next user message of the selected session. */
async function send() {
  const text = $('message').value;
  if (!text.trim() || state.controller) return;
  clearError();
  if (!state.current) {
    try {
      await createSession();
    } catch (e) {
      showError(e.message);
      return;
    }
  }
  $('message').value = '';
  const id = state.current;
  const user = addMessage('user', text);
  const reply = addMessage('assistant', '', false);
  await streamReply(id, text, user, reply);
}

/** Streams one reply into `reply`, then refreshes the session and its memory. */
async function streamReply(id, text, user, reply) {
  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  reply.classList.add('typing');
  const body = reply.querySelector('.body');
  const timing = { sent: performance.now(), first: null, end: null, chunks: 0, usage: null };
  let outcome = 'done';
  try {
    const res = await api('/v1/chat/completions', {
      method: 'POST',
      body: chatRequest(id, text),
      signal: controller.signal,
    });
    for await (const data of sseData(res.body)) {
      if (data === '[DONE]') break;
      readChunk(JSON.parse(data), body, timing);
    }
  } catch (e) {
    if (e.name === 'AbortError') {
      outcome = 'stopped';
    } else {
      outcome = 'failed';
      showError(e.message || String(e));
    }
  } finally {
    timing.end = performance.now();
    state.controller = null;
    setStreaming(false);
  }
  finishReply(reply, user, outcome, timing);
  if (state.current === id) await refreshAfterTurn(id, outcome);
}

/** The body of a chat request: only the new message; the session holds the rest. */
function chatRequest(id, text) {
  const request = {
    messages: [{ role: 'user', content: text }],
    stream: true,
    stream_options: { include_usage: true },
    session_id: id,
    temperature: numberField('temperature', 0.7, 0, 2),
    max_tokens: Math.round(numberField('max-tokens', 128, 1, 1e9)),
  };
  if (state.model) request.model = state.model;
  return request;
}

/** One streamed chunk: its text into the reply, its timing and usage into `timing`. */
function readChunk(chunk, body, timing) {
  if (chunk.error) throw new ApiError(chunk.error.message || 'the stream failed', 0);
  if (chunk.usage) timing.usage = chunk.usage;
  const choice = chunk.choices && chunk.choices[0];
  const delta = choice && choice.delta && choice.delta.content;
  if (!delta) return;
  if (timing.first === null) timing.first = performance.now();
  timing.chunks += 1;
  body.textContent += delta;
  scrollChat();
}

/**
 * The `data:` payloads of a server-sent event stream, one per event. EventSource cannot POST, so
 * the response body is read here: events end at a blank line, and an event's data lines join
 * with newlines; comments (keep-alives, `: …`) and other fields are skipped.
 */
async function* sseData(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const data = eventData(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (data !== null) yield data;
      }
    }
    const data = eventData(buffer);
    if (data !== null) yield data;
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** The data of one event's lines, or null when it has none. */
function eventData(event) {
  const lines = event
    .split('\n')
    .filter((line) => line.startsWith('data:'))
    .map((line) => line.slice(5).replace(/^ /, ''));
  return lines.length ? lines.join('\n') : null;
}

/** Marks the reply finished and shows its speed. */
function finishReply(reply, user, outcome, timing) {
  reply.classList.remove('typing');
  reply.dataset.done = 'true';
  reply.dataset.outcome = outcome;
  if (outcome === 'stopped') reply.append(textEl('div', 'stopped', 'note'));
  if (outcome === 'failed' && !reply.querySelector('.body').textContent) {
    reply.remove();
    user.classList.add('failed');
    user.append(textEl('div', 'not answered', 'note'));
    return;
  }
  showSpeed(timing, outcome);
}

/** Tokens/s (completion tokens over the time from the first token to the end) and TTFT. */
function showSpeed(timing, outcome) {
  const tokens = timing.usage ? timing.usage.completion_tokens : timing.chunks;
  if (timing.first === null) {
    $('reply-speed').textContent = 'Last reply: no tokens.';
    return;
  }
  const ttft = (timing.first - timing.sent) / 1000;
  const span = (timing.end - timing.first) / 1000;
  const rate = span > 0 ? `${(tokens / span).toFixed(1)} tokens/s` : '— tokens/s';
  const parts = [`Last reply: ${fmtInt(tokens)} tokens`, rate, `TTFT ${ttft.toFixed(2)} s`];
  if (outcome === 'stopped') parts.push('stopped');
  $('reply-speed').textContent = parts.join(' · ');
}

/** After a turn: the session's counts and its memory. A stopped turn is stored a moment later. */
async function refreshAfterTurn(id, outcome) {
  if (outcome === 'stopped') await sleep(400);
  await guardedQuiet(async () => {
    const session = await apiJson(`/v1/sessions/${encodeURIComponent(id)}`);
    upsertSession(withoutMessages(session));
    renderSessions();
    await loadMemory(id);
  });
}

/** Like guarded() but keeps an error already shown (the turn's own error matters more). */
async function guardedQuiet(action) {
  try {
    await action();
  } catch (e) {
    if ($('error').hidden) showError(e.message || String(e));
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Memory

/** Fetches and draws the session's memory map (the route ships in the same binary as this page). */
async function loadMemory(id) {
  const map = await apiJson(`/v1/sessions/${encodeURIComponent(id)}/memory`);
  if (state.current === id) renderMemory(map);
}

/** The index in `next` of the span shown at `index` in `previous` (same session), or null. */
function sameSpanIn(previous, next, index) {
  if (!previous || !next || index === null || previous.session_id !== next.session_id) return null;
  const shown = previous.spans[index];
  const at = shown ? next.spans.findIndex((s) => spanKey(s) === spanKey(shown)) : -1;
  return at >= 0 ? at : null;
}

/** Draws a memory map (null: nothing selected). */
function renderMemory(map) {
  state.activeSpan = sameSpanIn(state.memory, map, state.activeSpan);
  state.memory = map;
  renderSummary(map);
  renderTimeline(map);
  renderTierTable(map);
  renderLastTurn(map);
  renderDetail();
}

function renderSummary(map) {
  $('memory-summary').textContent = map
    ? `${fmtInt(map.tokens_seen)} tokens · ${fmtBytes(map.total_bytes)}`
    : '';
  $('axis-end').textContent = map ? `${fmtInt(map.tokens_seen)} tokens` : '';
}

/**
 * Pixel widths proportional to the spans' token counts, each at least MIN_SPAN_PX, filling
 * `width` when they fit (the container scrolls when they do not). Short spans take the minimum
 * and the rest share what is left, which may push more spans to the minimum: a few rounds settle.
 */
function spanWidths(spans, width) {
  const tokens = spans.map((s) => Math.max(0, s.end - s.start));
  let small = new Set();
  for (let round = 0; round < 5; round++) {
    const rest = tokens.reduce((sum, t, i) => (small.has(i) ? sum : sum + t), 0);
    const room = width - small.size * MIN_SPAN_PX;
    const scale = rest > 0 && room > 0 ? room / rest : 0;
    const next = new Set(tokens.flatMap((t, i) => (t * scale < MIN_SPAN_PX ? [i] : [])));
    if (next.size === small.size) {
      return tokens.map((t, i) => (small.has(i) ? MIN_SPAN_PX : Math.max(MIN_SPAN_PX, t * scale)));
    }
    small = next;
  }
  return tokens.map(() => MIN_SPAN_PX);
}

/** The timeline (one element per span, coloured by tier) and, under it, the heat strip. */
function renderTimeline(map) {
  const timeline = $('timeline');
  const heat = $('heat');
  timeline.replaceChildren();
  heat.replaceChildren();
  const spans = map ? map.spans : [];
  if (!spans.length) {
    timeline.append(textEl('div', map ? 'No tokens yet.' : 'No session selected.', 'timeline-empty'));
    return;
  }
  const width = Math.max(100, $('timeline-scroll').clientWidth - 2);
  const widths = spanWidths(spans, width);
  const most = Math.max(0, ...spans.map((s) => s.selected || 0));
  spans.forEach((span, i) => {
    timeline.append(spanElement(span, i, widths[i]));
    heat.append(heatCell(span, i, widths[i], most));
  });
}

/** A span of the timeline: a button coloured by its tier. */
function spanElement(span, index, width) {
  const el = document.createElement('button');
  el.type = 'button';
  el.className = `span tier-${span.tier}`;
  if (index === state.activeSpan) el.classList.add('active');
  el.dataset.index = String(index);
  el.dataset.start = String(span.start);
  el.dataset.end = String(span.end);
  if (span.block !== null && span.block !== undefined) el.dataset.block = String(span.block);
  el.style.width = `${width}px`;
  el.title = spanTitle(span);
  el.setAttribute('aria-label', spanTitle(span));
  el.addEventListener('click', () => showSpan(index));
  return el;
}

/**
 * The heat strip's cell under a span: for an archive block, coloured by how often the last reply
 * selected it relative to the most selected block; elsewhere an empty gap of the same width.
 */
function heatCell(span, index, width, most) {
  const el = document.createElement('div');
  el.style.width = `${width}px`;
  if (span.block === null || span.block === undefined) {
    el.className = 'heat-gap';
    return el;
  }
  const selected = span.selected || 0;
  el.className = 'heat-cell';
  el.dataset.block = String(span.block);
  el.dataset.selected = String(selected);
  el.dataset.index = String(index);
  const intensity = most > 0 ? selected / most : 0;
  if (selected > 0) el.style.backgroundColor = `rgba(234, 88, 12, ${0.12 + 0.88 * intensity})`;
  el.title = `block ${span.block}: selected ${fmtInt(selected)}× by the last reply`;
  el.addEventListener('click', () => showSpan(index));
  return el;
}

function spanTitle(span) {
  const what = span.block !== null && span.block !== undefined
    ? `archive block ${span.block}`
    : TIER_LABEL[span.tier] || span.tier;
  const read = span.selected ? ` · selected ${span.selected}×` : '';
  return `${what} · tokens ${fmtInt(span.start)}–${fmtInt(span.end)}${read}`;
}

/** Shows a span's detail and marks it on the timeline. */
function showSpan(index) {
  state.activeSpan = index;
  for (const el of $('timeline').querySelectorAll('.span')) {
    el.classList.toggle('active', Number(el.dataset.index) === index);
  }
  renderDetail();
}

/** The detail box: the active span's tier, token range, block, selections and text. */
function renderDetail() {
  const box = $('span-detail');
  const span = state.memory && state.activeSpan !== null ? state.memory.spans[state.activeSpan] : null;
  box.replaceChildren();
  box.classList.toggle('muted', !span);
  if (!span) {
    box.textContent = 'Click a span of the timeline to see its text.';
    return;
  }
  const facts = [
    `${TIER_LABEL[span.tier] || span.tier}`,
    `tokens ${fmtInt(span.start)}–${fmtInt(span.end)} (${fmtInt(span.end - span.start)})`,
  ];
  if (span.block !== null && span.block !== undefined) {
    facts.push(`block ${span.block}`, `selected ${fmtInt(span.selected || 0)}× by the last reply`);
  }
  const head = textEl('div', facts.join(' · '), 'detail-head');
  head.prepend(swatch(span.tier));
  box.append(head, textEl('pre', span.text, 'detail-text'));
}

function swatch(tier) {
  return textEl('span', '', `swatch tier-${tier}`);
}

function renderLegend() {
  const legend = $('legend');
  legend.replaceChildren();
  const item = (swatchEl, label, what) => {
    const li = document.createElement('li');
    li.title = what;
    li.append(swatchEl, document.createTextNode(label));
    legend.append(li);
  };
  for (const [tier, label, what] of TIERS) item(swatch(tier), label, what);
  item(textEl('span', '', 'swatch heat-swatch'), 'heat',
    'under the archive: how often the last reply read each block (darker: more)');
}

/** Tokens and bytes per tier, and the total. */
function renderTierTable(map) {
  const body = $('tier-table').querySelector('tbody');
  body.replaceChildren();
  if (!map) return;
  for (const t of map.tiers) {
    const row = document.createElement('tr');
    row.dataset.tier = t.tier;
    row.title = TIER_WHAT[t.tier] || '';
    const name = document.createElement('td');
    name.append(swatch(t.tier), document.createTextNode(TIER_LABEL[t.tier] || t.tier));
    row.append(name, textEl('td', fmtInt(t.tokens)), textEl('td', fmtBytes(t.bytes)));
    body.append(row);
  }
  const total = document.createElement('tr');
  total.className = 'total';
  total.append(textEl('td', 'total'), textEl('td', fmtInt(map.tokens_seen)), textEl('td', fmtBytes(map.total_bytes)));
  body.append(total);
}

/** What the last turn read, in one line. */
function renderLastTurn(map) {
  const turn = map && map.last_turn;
  if (!turn) {
    $('last-turn').textContent = '';
    return;
  }
  const parts = [
    `Last reply: ${fmtInt(turn.picks)} block picks in ${fmtInt(turn.segments)} query segments`,
  ];
  if (turn.selected_then_left) parts.push(`${fmtInt(turn.selected_then_left)} of blocks since moved on`);
  if (turn.signal_mass !== null && turn.signal_mass !== undefined) {
    parts.push(`signal attention ${(turn.signal_mass * 100).toFixed(1)}%`);
  }
  $('last-turn').textContent = parts.join(' · ');
}

// ---------------------------------------------------------------------------------------------
// Formatting

function fmtInt(n) {
  return Number(n || 0).toLocaleString('en-US');
}

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n || 0);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

// ---------------------------------------------------------------------------------------------
// Start

async function loadEverything() {
  await loadModel();
  await loadSessions();
  const wanted = state.current || localStorage.getItem(SESSION_STORE);
  if (wanted && state.sessions.some((s) => s.id === wanted)) await selectSession(wanted);
  else if (state.current) deselect();
}

/** Enter sends; Shift+Enter (or Enter while composing text in an IME) is a new line. */
function onMessageKey(event) {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
}

let resizeTimer = null;
function onResize() {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => renderTimeline(state.memory), 150);
}

function wire() {
  $('api-key').value = state.key;
  if (state.key) revealKeyField(false);
  $('api-key').addEventListener('input', onKeyInput);
  $('api-key-box').addEventListener('submit', (event) => event.preventDefault());
  $('new-session').addEventListener('click', () => guarded(createSession));
  $('fork-session').addEventListener('click', () => guarded(forkSession));
  $('delete-session').addEventListener('click', () => guarded(deleteSession));
  $('export-session').addEventListener('click', () => guarded(exportSession));
  $('import-file').addEventListener('change', () => guarded(importSession));
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  $('message').addEventListener('keydown', onMessageKey);
  $('stop').addEventListener('click', () => state.controller && state.controller.abort());
  $('error').addEventListener('click', clearError);
  window.addEventListener('resize', onResize);
}

function start() {
  wire();
  renderLegend();
  renderMemory(null);
  guarded(loadEverything);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
