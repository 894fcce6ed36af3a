// Shared helpers: building DOM without HTML strings, the API client (cookie session + CSRF
// token), uploads with progress, the real-time socket, and formatting.

/** The logged-in session: { user, csrf }. The session token itself is in an HttpOnly cookie
 *  this script cannot read; the CSRF token lives only in this variable (never in storage). */
export const session = { user: null, csrf: null };

/** h('button', {class: 'x', onclick: f}, 'text', child…): an element. Text is always text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An error from the server, with its stable code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthenticated = () => {};
export function whenLoggedOut(f) { onUnauthenticated = f; }

function headers(extra = {}) {
  const hs = { ...extra };
  if (session.csrf) hs['X-CSRF-Token'] = session.csrf;
  return hs;
}

async function failure(resp) {
  let code = 'http_' + resp.status, message = resp.statusText || 'request failed';
  try {
    const body = await resp.json();
    if (body.error) { code = body.error.code || code; message = body.error.message || message; }
    else if (body.status === 'error') { code = body.errorType || code; message = body.error || message; }
  } catch { /* not JSON */ }
  if (resp.status === 401 && session.user) onUnauthenticated();
  return new ApiError(resp.status, code, message);
}

/** Calls the API: JSON in, JSON out (undefined for 204). Throws ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: headers(), credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp);
  if (resp.status === 204) return undefined;
  return resp.json();
}

/** A query string from an object, leaving out empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? '?' + s : '';
}

/** Sends a file's bytes with progress (fetch cannot report upload progress; XHR can). */
export function upload(method, path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    for (const [k, v] of Object.entries(headers({ 'Content-Type': file.type || 'application/octet-stream' }))) {
      xhr.setRequestHeader(k, v);
    }
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* empty */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error?.code || 'http_' + xhr.status,
        body?.error?.message || 'upload failed'));
    };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the connection to the server failed; check it and try again'));
    xhr.send(file);
  });
}

/** Says something to everyone: visibly and to screen readers. */
export function say(text, kind = 'info') {
  const el = document.getElementById('status');
  el.className = 'status ' + kind;
  el.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { el.textContent = ''; el.className = 'status'; }, kind === 'error' ? 8000 : 4000);
}

/** Runs an async action from a UI event, reporting failure instead of dropping it. */
export function act(f) {
  return async (e) => {
    try { await f(e); } catch (err) { say(err.message || String(err), 'error'); }
  };
}

// ---- the real-time socket: one per page, reconnecting, shared by the views ----

const listeners = new Map();
let socket = null, opened = null, backoff = 500, pending = [];

/** Subscribes to server frames of one type; returns the unsubscribe function. */
export function onFrame(type, f) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(f);
  return () => listeners.get(type)?.delete(f);
}

function dispatch(frame) {
  for (const f of listeners.get(frame.type) || []) {
    try { f(frame); } catch (e) { console.error(e); }
  }
}

/** Opens the socket (the session cookie authenticates it; the server checks its Origin). */
export function connect() {
  if (socket) return opened;
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/ws';
  opened = new Promise((resolve) => {
    socket = new WebSocket(url);
    socket.onopen = () => {
      backoff = 500;
      for (const f of pending.splice(0)) socket.send(f);
      dispatch({ type: 'socket_open' });
      resolve();
    };
    socket.onmessage = (e) => {
      let f;
      try { f = JSON.parse(e.data); } catch { return; }
      dispatch(f);
    };
    socket.onclose = () => {
      socket = null;
      dispatch({ type: 'socket_closed' });
      if (session.user) setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 15000);
    };
  });
  return opened;
}

export function disconnect() {
  const s = socket;
  socket = null;
  if (s) s.close();
}

/** Sends a frame now, or when the socket is open. */
export function send(frame) {
  const text = JSON.stringify(frame);
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(text);
  else { pending.push(text); connect(); }
}

// ---- formatting ----

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  return new Date(ms).toLocaleString();
}

export function ago(ms) {
  if (!ms) return 'never';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}

export function fmtBytes(n) {
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + units[i];
}

/** A table: headers and rows of cells (nodes or text). */
export function table(caption, heads, rows, empty = 'Nothing yet.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c)))))));
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || ('f' + Math.random().toString(36).slice(2));
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', { class: 'muted' }, hint) : null);
}
