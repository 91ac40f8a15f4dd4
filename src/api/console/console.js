// The ragctl console: the caller's documents with their statuses live, an
// upload form, and a chat box with cited answers. It is the reference
// frontend: it uses realtime.js and the REST API (docs/api.md), nothing
// else.
import { connect, tokenExpiry } from '/realtime.js';

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = 'ragctl.console.token';
const CONV_KEY = 'ragctl.console.conversation';
const LOG_MAX = 100;

/** The claims of a JWT, or null if it is not one. */
function claimsOf(token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return null;
  }
}

/**
 * The token: this tab's, else the link's (the embedded database's first-run
 * link). A link's token for another user never replaces the tab's silently:
 * anyone can send a link, and signing a victim in as the sender (login CSRF)
 * would show them the sender's documents and keep what they upload. The
 * page asks instead, and keeps the tab's token until the user accepts.
 */
function takeToken() {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromLink) history.replaceState(null, '', location.pathname + location.search);
  const stored = sessionStorage.getItem(TOKEN_KEY);
  if (fromLink && fromLink !== stored) {
    // The same user's newer token is no switch of identity.
    const sub = claimsOf(fromLink)?.sub;
    const same = stored && sub && sub === claimsOf(stored)?.sub;
    if (!stored || same) sessionStorage.setItem(TOKEN_KEY, fromLink);
    else offerSwitch(fromLink, stored);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Shows the link's user next to the tab's and switches only on a click. */
function offerSwitch(fromLink, stored) {
  const box = $('#switch');
  const who = (t) => claimsOf(t)?.sub || '(not a JWT)';
  $('#switch-to').textContent = who(fromLink);
  $('#switch-from').textContent = who(stored);
  box.hidden = false;
  $('#switch-accept').onclick = () => {
    sessionStorage.setItem(TOKEN_KEY, fromLink);
    // The conversation shown was the other user's.
    sessionStorage.removeItem(CONV_KEY);
    location.reload();
  };
  $('#switch-keep').onclick = () => {
    box.hidden = true;
  };
}

// A link followed from this page changes only the fragment: read it anew.
window.addEventListener('hashchange', () => {
  if (new URLSearchParams(location.hash.slice(1)).has('token')) location.reload();
});

/** An RFC 3339 time in microseconds (Date.parse keeps only milliseconds). */
function micros(ts) {
  if (!ts) return 0;
  const ms = Date.parse(ts);
  const frac = /\.(\d+)/.exec(ts);
  const us = frac ? Number((frac[1] + '000000').slice(3, 6)) : 0;
  return ms * 1000 + us;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || 'HTTP ' + status);
    this.status = status;
  }
}

function makeApi(token) {
  return async (path, init = {}) => {
    const headers = { Authorization: 'Bearer ' + token, ...(init.headers || {}) };
    const res = await fetch(path, { ...init, headers });
    const body = await res.json().catch(() => null);
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  };
}

// ---- lists -----------------------------------------------------------------

/** Rows of a list fetched at once before the page offers "load more". */
const LOAD_AT_ONCE = 1000;
const PAGE = 100;

/**
 * Up to `max` rows of a paginated list (docs/api.md, "Pages"), following
 * `next_cursor` from `cursor` (or the first page); `rows`, and the cursor
 * to go on from, null at the end.
 */
async function fetchPages(api, path, key, cursor = null, max = LOAD_AT_ONCE) {
  const rows = [];
  const sep = path.includes('?') ? '&' : '?';
  do {
    const page = await api(`${path}${sep}limit=${PAGE}` + (cursor ? `&cursor=${cursor}` : ''));
    rows.push(...page[key]);
    cursor = page.next_cursor;
  } while (cursor && rows.length < max);
  return { rows, cursor };
}

/**
 * Puts a new `el` among `parent`'s children by (`at`, id): newest first if
 * `desc`. Rows arrive by pages and by events, in any order.
 */
function place(parent, el, at, desc) {
  el.dataset.at = at;
  const id = el.dataset.id;
  const goesAfter = (x) => {
    const xa = Number(x.dataset.at);
    return desc ? xa < at || (xa === at && x.dataset.id < id) : xa > at || (xa === at && x.dataset.id > id);
  };
  const next = [...parent.children].find((x) => x !== el && goesAfter(x));
  parent.insertBefore(el, next || null);
}

// ---- documents -------------------------------------------------------

const docs = new Map();

/** Applies a document state unless it is older than the one shown. */
function applyDoc(id, fields, ts) {
  const t = micros(ts);
  const cur = docs.get(id);
  if (cur && t < cur.t) return;
  const d = cur || { id, history: [] };
  Object.assign(d, fields, { t, ts });
  if (d.history[d.history.length - 1] !== d.status) d.history.push(d.status);
  docs.set(id, d);
  renderDoc(d);
}

function renderDoc(d) {
  let row = $('#docs').querySelector(`tr[data-id="${d.id}"]`);
  if (!row) {
    row = document.createElement('tr');
    row.dataset.id = d.id;
    for (let i = 0; i < 4; i++) row.append(document.createElement('td'));
    place($('#docs'), row, micros(d.created_at || d.ts), true);
  }
  row.dataset.status = d.status;
  row.dataset.history = d.history.join(' ');
  const [name, status, hist, updated] = row.children;
  name.textContent = d.filename || d.id;
  status.replaceChildren(Object.assign(document.createElement('span'), {
    className: 'status status-' + d.status, textContent: d.status,
  }));
  if (d.error_message) {
    status.append(Object.assign(document.createElement('div'), {
      className: 'error-message', textContent: d.error_message,
    }));
  }
  hist.className = 'history';
  hist.textContent = d.history.join(' → ');
  updated.textContent = new Date(d.ts).toLocaleTimeString();
  $('#no-docs').hidden = docs.size > 0;
}

/** The first documents (newest first), and a button for the older ones. */
async function loadDocuments(api) {
  const { rows, cursor } = await fetchPages(api, '/documents', 'documents');
  showMoreDocs(api, cursor);
  for (const d of rows) applyDoc(d.id, d, d.updated_at);
  $('#no-docs').hidden = docs.size > 0;
  return rows.map((d) => d.updated_at);
}

function showMoreDocs(api, cursor) {
  const more = $('#more-docs');
  more.hidden = !cursor;
  more.onclick = async () => {
    more.disabled = true;
    try {
      const next = await fetchPages(api, '/documents', 'documents', cursor);
      for (const d of next.rows) applyDoc(d.id, d, d.updated_at);
      showMoreDocs(api, next.cursor);
    } finally {
      more.disabled = false;
    }
  };
}

// ---- chat --------------------------------------------------------------

const messages = new Map();
let conversation = sessionStorage.getItem(CONV_KEY);

function applyMessage(m, ts) {
  if (m.conversation_id !== conversation) return;
  const t = micros(ts);
  const cur = messages.get(m.id);
  if (cur && t < cur.t) return;
  // A catch-up frame carries the first 4,096 characters only
  // (docs/events.md): keep the whole text if held, else mark the cut.
  if (m.content_truncated) {
    const held = cur && cur.content && cur.content.startsWith(m.content);
    m = { ...m, content: held ? cur.content : m.content + '…' };
  }
  const msg = { ...(cur || {}), ...m, t };
  messages.set(m.id, msg);
  let li = $('#messages').querySelector(`li[data-id="${m.id}"]`);
  if (!li) {
    li = document.createElement('li');
    li.dataset.id = m.id;
    place($('#messages'), li, micros(m.created_at || ts), false);
  }
  li.className = `${msg.role} ${msg.status}`;
  li.dataset.status = msg.status;
  let text = msg.content || (msg.status === 'pending' ? '…' : '');
  const sources = Array.isArray(msg.sources) ? msg.sources : [];
  // The answer ends with its sources as text; they are listed below instead.
  if (sources.length) text = text.replace(/\n\nSources:\n[\s\S]*$/, '');
  li.textContent = msg.status === 'error' ? `error: ${msg.error_message || text}` : text;
  if (sources.length) {
    const ol = Object.assign(document.createElement('ul'), { className: 'sources' });
    for (const s of sources) {
      ol.append(Object.assign(document.createElement('li'), {
        textContent: `[${s.n}] ${s.filename}, chunk ${s.chunk_index}`,
      }));
    }
    li.append(ol);
  }
  li.scrollIntoView({ block: 'nearest' });
}

/** Messages of the latest page of a conversation (the chat's view). */
const LATEST = 50;

async function loadMessages(api) {
  if (!conversation) {
    // Continue the newest conversation, if any.
    const { conversations } = await api('/conversations?limit=1');
    if (!conversations.length) return [];
    conversation = conversations[0].id;
    sessionStorage.setItem(CONV_KEY, conversation);
  }
  const path = `/conversations/${conversation}/messages?order=desc`;
  try {
    const page = await api(`${path}&limit=${LATEST}`);
    for (const m of page.messages) applyMessage(m, m.updated_at);
    showOlder(api, path, page.next_cursor);
    return page.messages.map((m) => m.updated_at);
  } catch (e) {
    if (e.status === 404) {
      conversation = null;
      sessionStorage.removeItem(CONV_KEY);
      return [];
    }
    throw e;
  }
}

/** "Older messages": the next page back, newest first, on a click. */
function showOlder(api, path, cursor) {
  const older = $('#older');
  older.hidden = !cursor;
  older.onclick = async () => {
    older.disabled = true;
    try {
      const page = await api(`${path}&limit=${LATEST}&cursor=${cursor}`);
      for (const m of page.messages) applyMessage(m, m.updated_at);
      showOlder(api, path, page.next_cursor);
    } finally {
      older.disabled = false;
    }
  };
}

async function ask(api, question) {
  if (!conversation) {
    const conv = await api('/conversations', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ title: question.slice(0, 200) }),
    });
    conversation = conv.id;
    sessionStorage.setItem(CONV_KEY, conversation);
  }
  const r = await api(`/conversations/${conversation}/messages`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ content: question }),
  });
  applyMessage(r.user_message, r.user_message.updated_at);
  applyMessage(r.assistant_message, r.assistant_message.updated_at);
}

// ---- events --------------------------------------------------------------

function onEvent(frame) {
  const p = frame.payload;
  switch (frame.type) {
    case 'document.created':
      applyDoc(p.document_id, { filename: p.filename, status: p.status }, p.created_at);
      break;
    case 'document.status_updated':
      applyDoc(p.document_id, { status: p.status, error_message: p.error_message }, p.updated_at);
      break;
    case 'message.created':
      applyMessage({ ...p, id: p.message_id }, p.created_at);
      break;
    case 'message.status_updated':
      applyMessage({ ...p, id: p.message_id }, p.updated_at);
      break;
  }
  log(frame);
}

function log(frame) {
  const p = frame.payload || {};
  const what = [p.status, p.kind, p.filename, p.reason].filter(Boolean).join(' ');
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${frame.type}  ${what}`;
  $('#log').prepend(li);
  while ($('#log').children.length > LOG_MAX) $('#log').lastChild.remove();
}

function showStatus(info) {
  const el = $('#status');
  el.dataset.status = info.status;
  let text = info.status.replace('_', ' ');
  if (info.status === 'offline' && info.retryInMs !== undefined) {
    text += ` (retry in ${(info.retryInMs / 1000).toFixed(1)} s)`;
  }
  if (info.status === 'unauthorized') {
    text += info.code ? ` (${info.code})` : info.httpStatus ? ` (${info.httpStatus})` : '';
    signIn('The server refused the token: paste a new one.');
  }
  el.textContent = text;
}

function signIn(note) {
  sessionStorage.removeItem(TOKEN_KEY);
  $('#signin').hidden = false;
  if (note) $('#signin p').textContent = note;
  $('#signin').onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    location.reload();
  };
}

/** The newest of the times loaded through REST: where the socket resumes from. */
const newest = (times) =>
  times.reduce((a, b) => (micros(b) > micros(a) ? b : a), '1970-01-01T00:00:00Z');

async function reload(api) {
  const [d, m] = await Promise.all([loadDocuments(api), loadMessages(api)]);
  return newest([...d, ...m]);
}

async function main() {
  const token = takeToken();
  if (!token) return signIn();
  const exp = tokenExpiry(token);
  const sub = claimsOf(token)?.sub;
  if (!sub) return signIn('That is not a JWT with a user (`sub`): paste an access token.');
  // Whose documents these are, always on screen.
  $('#user').dataset.sub = sub;
  $('#user').textContent = `signed in as user ${sub}` + (exp ? `, token until ${new Date(exp * 1000).toLocaleString()}` : '');
  const api = makeApi(token);
  let since;
  try {
    since = await reload(api);
  } catch (e) {
    if (e.status === 401 || e.status === 403) return signIn('The server refused the token: paste a new one.');
    throw e;
  }
  $('#app').hidden = false;
  connect({
    url: location.origin.replace(/^http/, 'ws') + '/ws',
    getToken: () => token,
    onEvent,
    onStatus: showStatus,
    onResync: (reason) => {
      log({ type: 'realtime.resync', payload: { reason } });
      return reload(api);
    },
    since,
  });

  $('#upload').onsubmit = async (e) => {
    e.preventDefault();
    const form = e.target;
    const out = $('#upload-result');
    out.textContent = 'uploading…';
    try {
      const d = await api('/documents', { method: 'POST', body: new FormData(form) });
      applyDoc(d.id, d, d.created_at);
      out.textContent = `uploaded ${d.filename}`;
      form.reset();
    } catch (err) {
      out.textContent = `upload failed: ${err.message}`;
    }
  };
  $('#chat').onsubmit = async (e) => {
    e.preventDefault();
    const q = $('#question');
    const question = q.value.trim();
    if (!question) return;
    q.value = '';
    try {
      await ask(api, question);
    } catch (err) {
      log({ type: 'chat.error', payload: { reason: err.message } });
    }
  };
}

main();
