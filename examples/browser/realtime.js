// realtime.js: a dependency-free browser client for ragctl's `/ws`.
// Copy this file into your frontend or import it; docs/browser.md explains
// it. The console page (`ragctl serve`, `/`) uses this very file, served at
// `/realtime.js`.
//
// What it does for you:
// - sends the token as the `bearer` subprotocol (never in the URL, so it
//   stays out of proxy logs) and refreshes it in-band a minute before it
//   expires (`auth.refresh`), so the socket outlives an hourly token;
// - reconnects with exponential backoff and full jitter, at once when the
//   browser comes back `online` or a hidden tab becomes visible;
// - resumes with `?since=<cursor>` (the cursor of the last
//   `realtime.caught_up`), so nothing is missed after a blip, a deploy or a
//   renewed token; asks for `realtime.resync` (`?resync=1`) and calls
//   `onResync` when the app must refetch through REST;
// - applies a policy per close code, and never loops on a bad token.

/**
 * A frame as the server sends it.
 * @typedef {{type: string, payload: any}} Frame
 */

/**
 * Where the connection stands.
 * - `connecting`: opening a socket (`attempt` counts failures in a row);
 * - `catching_up`: open, receiving what changed since the cursor;
 * - `live`: open and up to date;
 * - `offline`: closed, retrying in `retryInMs` (`code` says why);
 * - `unauthorized`: stopped for good: the token was refused (`httpStatus`
 *   401/403 at the upgrade, or close `code` 4003/4004). Get the user to
 *   sign in again, then call `connect` anew;
 * - `closed`: `close()` was called.
 * @typedef {'connecting'|'catching_up'|'live'|'offline'|'unauthorized'|'closed'} Status
 * @typedef {{status: Status, attempt?: number, code?: number, reason?: string,
 *   retryInMs?: number, httpStatus?: number}} StatusInfo
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {string} url The socket's URL: `wss://api.example.com/ws`.
 * @property {() => (string|Promise<string>)} getToken Returns a current
 *   access token; called before every connection and every refresh. With
 *   Supabase: `async () => (await supabase.auth.getSession()).data.session.access_token`.
 * @property {(frame: Frame) => void} onEvent Every event frame
 *   (`document.*`, `job.*`, `message.*`); frames are idempotent: keep the
 *   one with the newest `updated_at` / `created_at`.
 * @property {(info: StatusInfo) => void} [onStatus]
 * @property {(reason: string) => (void|string|Promise<void|string>)} [onResync]
 *   Refetch through REST: events may have been missed. May return (or
 *   resolve to) the newest `updated_at` / `created_at` the refetch holds,
 *   which becomes the cursor to resume from.
 * @property {string} [since] Where to resume from on the first connection:
 *   the newest `updated_at` / `created_at` of the app's REST load (RFC 3339),
 *   or a saved `caught_up` cursor. Without it the first connection starts
 *   live, and a reconnection before any cursor calls `onResync('no_cursor')`.
 * @property {number} [refreshBeforeMs=60000] Refresh the token this long
 *   before it expires (at most half its remaining life).
 * @property {number} [backoffBaseMs=500]
 * @property {number} [backoffMaxMs=30000]
 */

/** Close codes the server uses (docs/events.md). */
export const CLOSE = Object.freeze({
  GOING_AWAY: 1001,
  TOKEN_EXPIRED: 4001,
  IDLE: 4002,
  REFRESH_INVALID: 4003,
  REFRESH_OTHER_USER: 4004,
  SLOW_CONSUMER: 4008,
});

/**
 * The `exp` (seconds since the epoch) of a JWT, read without verifying it;
 * `null` if it cannot be read.
 * @param {string} token
 * @returns {number|null}
 */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp : null;
  } catch {
    return null;
  }
}

/**
 * Full jitter: a uniform delay in [0, min(max, base * 2^attempt)).
 * @param {number} attempt @param {number} base @param {number} max
 */
export function backoffDelay(attempt, base, max) {
  return Math.random() * Math.min(max, base * 2 ** Math.min(attempt, 30));
}

/**
 * Opens the realtime connection and keeps it up until `close()`.
 * @param {ConnectOptions} opts
 * @returns {{close(): void, readonly status: Status, readonly cursor: (string|null)}}
 */
export function connect(opts) {
  const o = { refreshBeforeMs: 60000, backoffBaseMs: 500, backoffMaxMs: 30000, ...opts };
  const onStatus = o.onStatus || (() => {});
  /** @type {Status} */ let status = 'connecting';
  /** @type {string|null} */ let cursor = o.since || null;
  /** @type {WebSocket|null} */ let ws = null;
  let attempt = 0;          // failed connections in a row
  let refused = 0;          // upgrades refused with 401/403 in a row
  let stopped = false;
  let everOpened = false;
  /** @type {ReturnType<typeof setTimeout>|undefined} */ let retryTimer;
  /** @type {ReturnType<typeof setTimeout>|undefined} */ let refreshTimer;
  let expiresAt = 0;        // ms since the epoch, of the socket's token

  /** @param {Status} s @param {Omit<StatusInfo,'status'>} [extra] */
  const report = (s, extra = {}) => { status = s; onStatus({ status: s, ...extra }); };

  const socketUrl = () => {
    const u = new URL(o.url);
    u.searchParams.set('resync', '1');
    if (cursor) u.searchParams.set('since', cursor);
    else u.searchParams.delete('since');
    return u.toString();
  };

  const resync = async (/** @type {string} */ reason) => {
    if (!o.onResync) return;
    try {
      const newest = await o.onResync(reason);
      if (typeof newest === 'string' && newest) cursor = newest;
    } catch (e) {
      console.warn('realtime.js: onResync failed', e);
    }
  };

  async function open() {
    clearTimeout(retryTimer);
    retryTimer = undefined;
    if (stopped) return;
    report('connecting', { attempt });
    let token;
    try {
      token = await o.getToken();
    } catch (e) {
      return retry(undefined, 'getToken failed: ' + e);
    }
    if (stopped) return;
    const resuming = cursor !== null;
    const needsResync = !resuming && everOpened;
    let opened = false;
    const socket = new WebSocket(socketUrl(), ['bearer', token]);
    ws = socket;
    socket.onopen = () => {
      opened = true;
      everOpened = true;
      refused = 0;
      report(resuming ? 'catching_up' : 'live');
      if (!resuming) attempt = 0;
      scheduleRefresh(tokenExpiry(token));
      if (needsResync) resync('no_cursor');
    };
    socket.onmessage = (m) => onFrame(m.data);
    socket.onclose = (e) => {
      if (ws !== socket) return;
      ws = null;
      clearTimeout(refreshTimer);
      if (stopped) return;
      if (opened) onClosed(e.code, e.reason);
      else onRefused(token);
    };
  }

  /** @param {string} data */
  function onFrame(data) {
    /** @type {Frame} */ let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'realtime.caught_up':
        cursor = frame.payload.cursor;
        attempt = 0;
        report('live');
        break;
      case 'realtime.resync':
        // After an overflowing catch-up no `caught_up` follows: live now.
        if (status === 'catching_up' && frame.payload.reason === 'catchup_overflow') report('live');
        resync(frame.payload.reason);
        break;
      case 'auth.refreshed':
        scheduleRefresh(Date.parse(frame.payload.expires_at) / 1000);
        break;
      default:
        o.onEvent(frame);
    }
  }

  /** The policy per close code (docs/browser.md). */
  function onClosed(/** @type {number} */ code, /** @type {string} */ reason) {
    if (code === CLOSE.REFRESH_INVALID || code === CLOSE.REFRESH_OTHER_USER) {
      stopped = true;
      report('unauthorized', { code, reason });
      return;
    }
    if (code === CLOSE.TOKEN_EXPIRED) {
      // A fresh token, at once: the cursor covers the gap.
      attempt = 0;
      open();
      return;
    }
    // 1001, 4002, 4008, 1006 (network) and the rest: back off, resume.
    retry(code, reason);
  }

  /**
   * The socket failed before opening. A browser tells nothing (1006), so
   * ask the same URL over plain HTTP: the server answers 401/403 for a bad
   * token and 400 `invalid_cursor` for a cursor it cannot use.
   * @param {string} token
   */
  async function onRefused(token) {
    let res = null;
    try {
      const u = new URL(socketUrl());
      u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
      res = await fetch(u, { headers: { Authorization: 'Bearer ' + token } });
    } catch {
      // Network down, or a cross-origin server without CORS: retry.
    }
    if (stopped) return;
    if (res && (res.status === 401 || res.status === 403)) {
      refused += 1;
      // Once more with a token fetched anew (it may just have expired);
      // the same refusal again stops: never loop on a bad token.
      if (refused >= 2) {
        stopped = true;
        report('unauthorized', { httpStatus: res.status });
        return;
      }
      return open();
    }
    if (res && res.status === 400) {
      const body = await res.json().catch(() => ({}));
      if (body && body.error && body.error.code === 'invalid_cursor') {
        cursor = null;
        everOpened = true; // so the next open asks for a refetch
      }
    }
    retry(undefined, res ? 'upgrade refused: HTTP ' + res.status : 'network error');
  }

  /** @param {number|undefined} code @param {string} reason */
  function retry(code, reason) {
    if (stopped) return;
    const retryInMs = backoffDelay(attempt, o.backoffBaseMs, o.backoffMaxMs);
    attempt += 1;
    report('offline', { code, reason, retryInMs, attempt });
    retryTimer = setTimeout(open, retryInMs);
  }

  /** @param {number|null} exp seconds since the epoch */
  function scheduleRefresh(exp) {
    clearTimeout(refreshTimer);
    if (!exp || !Number.isFinite(exp)) return;
    expiresAt = exp * 1000;
    const left = expiresAt - Date.now();
    const margin = Math.min(o.refreshBeforeMs, left / 2);
    // setTimeout fires at once past 2^31-1 ms (24.8 days).
    refreshTimer = setTimeout(refresh, Math.min(2 ** 31 - 1, Math.max(0, left - margin)));
  }

  async function refresh() {
    const socket = ws;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    let token;
    try {
      token = await o.getToken();
    } catch {
      token = null;
    }
    const exp = token ? tokenExpiry(token) : null;
    if (!token || (exp !== null && exp * 1000 <= expiresAt)) {
      // Not renewed yet (e.g. Supabase renews a little later): try again
      // while there is time; at worst the server closes 4001 and we
      // reconnect at once with a fresh token.
      const left = expiresAt - Date.now();
      if (left > 1000) refreshTimer = setTimeout(refresh, Math.min(5000, left / 2));
      return;
    }
    if (ws === socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: 'auth.refresh', payload: { token } }));
    }
  }

  const wake = () => {
    if (!stopped && !ws && retryTimer !== undefined) open();
  };
  const onVisible = () => {
    if (document.visibilityState === 'visible') wake();
  };
  if (typeof window !== 'undefined') window.addEventListener('online', wake);
  if (typeof document !== 'undefined') document.addEventListener('visibilitychange', onVisible);

  open();

  return {
    close() {
      stopped = true;
      clearTimeout(retryTimer);
      clearTimeout(refreshTimer);
      if (typeof window !== 'undefined') window.removeEventListener('online', wake);
      if (typeof document !== 'undefined') document.removeEventListener('visibilitychange', onVisible);
      if (ws) ws.close(1000);
      ws = null;
      report('closed');
    },
    get status() {
      return status;
    },
    get cursor() {
      return cursor;
    },
  };
}
