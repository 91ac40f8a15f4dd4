// The ragctl console: the caller's documents with their statuses live, an
// upload form, and a chat box with cited answers. It is the reference
// frontend: it uses realtime.js and the REST API (docs/api.md), nothing
// else.
import { connect, tokenExpiry } from '/realtime.js';

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = 'ragctl.console.token';
const CONV_KEY = 'ragctl.console.conversation';
const LOG_MAX = 100;

/** The token: from the link's fragment (then out of the address bar), else this tab's storage. */
function takeToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromLink = hash.get('token');
  if (fromLink) {
    sessionStorage.setItem(TOKEN_KEY, fromLink);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

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
    $('#docs').prepend(row);
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

async function loadDocuments(api) {
  const { documents } = await api('/documents');
  // Newest first from REST; each new row goes on top.
  for (const d of documents.slice().reverse()) applyDoc(d.id, d, d.updated_at);
  $('#no-docs').hidden = docs.size > 0;
  return documents.map((d) => d.updated_at);
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
    $('#messages').append(li);
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

async function loadMessages(api) {
  if (!conversation) {
    // Continue the newest conversation, if any.
    const { conversations } = await api('/conversations');
    if (!conversations.length) return [];
    conversation = conversations[0].id;
    sessionStorage.setItem(CONV_KEY, conversation);
  }
  try {
    const { messages: list } = await api(`/conversations/${conversation}/messages`);
    for (const m of list) applyMessage(m, m.updated_at);
    return list.map((m) => m.updated_at);
  } catch (e) {
    if (e.status === 404) {
      conversation = null;
      sessionStorage.removeItem(CONV_KEY);
      return [];
    }
    throw e;
  }
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
  try {
    const sub = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub;
    $('#user').textContent = `user ${sub}` + (exp ? `, token until ${new Date(exp * 1000).toLocaleString()}` : '');
  } catch {
    return signIn('That is not a JWT: paste an access token.');
  }
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
