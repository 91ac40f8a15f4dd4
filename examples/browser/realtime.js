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
 * @returns {Realtime}
 */
export function connect(opts) {
  return new Realtime(opts);
}

/** One realtime connection, kept up until `close()`. */
export class Realtime {
  /** @type {Required<Pick<ConnectOptions,'refreshBeforeMs'|'backoffBaseMs'|'backoffMaxMs'>> & ConnectOptions} */ #o;
  /** @type {Status} */ #status = 'connecting';
  /** @type {string|null} */ #cursor;
  /** @type {WebSocket|null} */ #ws = null;
  #attempt = 0; // failed connections in a row
  #refused = 0; // upgrades refused with 401/403 in a row
  #stopped = false;
  #everOpened = false;
  /** @type {ReturnType<typeof setTimeout>|undefined} */ #retryTimer;
  /** @type {ReturnType<typeof setTimeout>|undefined} */ #refreshTimer;
  #expiresAt = 0; // ms since the epoch: the socket's token expiry

  /** @param {ConnectOptions} opts */
  constructor(opts) {
    this.#o = { refreshBeforeMs: 60000, backoffBaseMs: 500, backoffMaxMs: 30000, ...opts };
    this.#cursor = opts.since || null;
    if (typeof window !== 'undefined') window.addEventListener('online', this.#wake);
    if (typeof document !== 'undefined') document.addEventListener('visibilitychange', this.#onVisible);
    this.#open();
  }

  /** @returns {Status} */
  get status() {
    return this.#status;
  }

  /** The cursor the next connection resumes from. */
  get cursor() {
    return this.#cursor;
  }

  /** Closes the socket for good. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#refreshTimer);
    if (typeof window !== 'undefined') window.removeEventListener('online', this.#wake);
    if (typeof document !== 'undefined') document.removeEventListener('visibilitychange', this.#onVisible);
    if (this.#ws) this.#ws.close(1000);
    this.#ws = null;
    this.#report('closed');
  }

  /** @param {Status} status @param {Omit<StatusInfo,'status'>} [extra] */
  #report(status, extra = {}) {
    this.#status = status;
    if (this.#o.onStatus) this.#o.onStatus({ status, ...extra });
  }

  #socketUrl() {
    const u = new URL(this.#o.url);
    u.searchParams.set('resync', '1');
    if (this.#cursor) u.searchParams.set('since', this.#cursor);
    else u.searchParams.delete('since');
    return u.toString();
  }

  /** @param {string} reason */
  async #resync(reason) {
    if (!this.#o.onResync) return;
    try {
      const newest = await this.#o.onResync(reason);
      if (typeof newest === 'string' && newest) this.#cursor = newest;
    } catch (e) {
      console.warn('realtime.js: onResync failed', e);
    }
  }

  async #open() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    if (this.#stopped) return;
    this.#report('connecting', { attempt: this.#attempt });
    let token;
    try {
      token = await this.#o.getToken();
    } catch (e) {
      return this.#retry(undefined, 'getToken failed: ' + e);
    }
    if (this.#stopped) return;
    const socket = new WebSocket(this.#socketUrl(), ['bearer', token]);
    this.#ws = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.#onOpen(token);
    };
    socket.onmessage = (m) => this.#onFrame(m.data);
    socket.onclose = (e) => {
      if (this.#ws !== socket) return;
      this.#ws = null;
      clearTimeout(this.#refreshTimer);
      if (this.#stopped) return;
      if (opened) this.#onClosed(e.code, e.reason);
      else this.#onRefused(token);
    };
  }

  /** @param {string} token */
  #onOpen(token) {
    const resuming = this.#cursor !== null;
    // Reconnected with nothing to resume from: the app must refetch.
    const refetch = !resuming && this.#everOpened;
    this.#everOpened = true;
    this.#refused = 0;
    if (!resuming) this.#attempt = 0;
    this.#report(resuming ? 'catching_up' : 'live');
    this.#scheduleRefresh(tokenExpiry(token));
    if (refetch) this.#resync('no_cursor');
  }

  /** @param {string} data */
  #onFrame(data) {
    /** @type {Frame} */ let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'realtime.caught_up':
        this.#cursor = frame.payload.cursor;
        this.#attempt = 0;
        this.#report('live');
        break;
      case 'realtime.resync':
        // After an overflowing catch-up no `caught_up` follows: live now.
        if (this.#status === 'catching_up' && frame.payload.reason === 'catchup_overflow') {
          this.#report('live');
        }
        this.#resync(frame.payload.reason);
        break;
      case 'auth.refreshed':
        this.#scheduleRefresh(Date.parse(frame.payload.expires_at) / 1000);
        break;
      default:
        this.#o.onEvent(frame);
    }
  }

  /**
   * The policy per close code (docs/browser.md).
   * @param {number} code @param {string} reason
   */
  #onClosed(code, reason) {
    if (code === CLOSE.REFRESH_INVALID || code === CLOSE.REFRESH_OTHER_USER) {
      this.#stopped = true;
      this.#report('unauthorized', { code, reason });
      return;
    }
    if (code === CLOSE.TOKEN_EXPIRED) {
      // A fresh token, at once: the cursor covers the gap.
      this.#attempt = 0;
      this.#open();
      return;
    }
    // 1001, 4002, 4008, 1006 (network) and the rest: back off, resume.
    this.#retry(code, reason);
  }

  /**
   * The socket failed before opening. A browser tells nothing (1006), so
   * ask the same URL over plain HTTP: the server answers 401/403 for a bad
   * token, 400 `invalid_cursor` for a cursor it cannot use, and 429 / 503
   * with `Retry-After` for a user or a server at its cap of sockets.
   * @param {string} token
   */
  async #onRefused(token) {
    const res = await this.#probe(token);
    if (this.#stopped) return;
    if (res && (res.status === 401 || res.status === 403)) {
      this.#refused += 1;
      // Once more with a token fetched anew (it may just have expired);
      // the same refusal again stops: never loop on a bad token.
      if (this.#refused >= 2) {
        this.#stopped = true;
        this.#report('unauthorized', { httpStatus: res.status });
        return;
      }
      this.#open();
      return;
    }
    if (res && res.status === 400) {
      const body = await res.json().catch(() => ({}));
      if (body && body.error && body.error.code === 'invalid_cursor') {
        this.#cursor = null;
        this.#everOpened = true; // so that the next socket asks for a refetch
      }
    }
    // 429 `too_many_sockets` (this user holds their share of sockets, e.g.
    // many tabs) or 503 (the server is full): not a reason to stop; wait at
    // least what `Retry-After` asks, then go on backing off.
    let waitMs = 0;
    if (res && (res.status === 429 || res.status === 503)) {
      waitMs = (Number(res.headers.get('Retry-After')) || 0) * 1000;
    }
    this.#retry(undefined, res ? 'upgrade refused: HTTP ' + res.status : 'network error', waitMs);
  }

  /** @param {string} token @returns {Promise<Response|null>} */
  async #probe(token) {
    try {
      const u = new URL(this.#socketUrl());
      u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
      return await fetch(u, { headers: { Authorization: 'Bearer ' + token } });
    } catch {
      return null; // network down, or a cross-origin server without CORS
    }
  }

  /**
   * @param {number|undefined} code @param {string} reason
   * @param {number} [atLeastMs] what the server asked for (`Retry-After`)
   */
  #retry(code, reason, atLeastMs = 0) {
    if (this.#stopped) return;
    const backoff = backoffDelay(this.#attempt, this.#o.backoffBaseMs, this.#o.backoffMaxMs);
    const retryInMs = Math.max(atLeastMs, backoff);
    this.#attempt += 1;
    this.#report('offline', { code, reason, retryInMs, attempt: this.#attempt });
    this.#retryTimer = setTimeout(() => this.#open(), retryInMs);
  }

  /** @param {number|null} exp seconds since the epoch */
  #scheduleRefresh(exp) {
    clearTimeout(this.#refreshTimer);
    if (!exp || !Number.isFinite(exp)) return;
    this.#expiresAt = exp * 1000;
    const left = this.#expiresAt - Date.now();
    const margin = Math.min(this.#o.refreshBeforeMs, left / 2);
    // setTimeout fires at once past 2^31-1 ms (24.8 days).
    const delay = Math.min(2 ** 31 - 1, Math.max(0, left - margin));
    this.#refreshTimer = setTimeout(() => this.#refresh(), delay);
  }

  async #refresh() {
    const socket = this.#ws;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    let token = null;
    try {
      token = await this.#o.getToken();
    } catch {
      // Treated as not renewed yet.
    }
    const exp = token ? tokenExpiry(token) : null;
    if (!token || (exp !== null && exp * 1000 <= this.#expiresAt)) {
      // Not renewed yet (e.g. Supabase renews a little later): try again
      // while there is time; at worst the server closes 4001 and we
      // reconnect at once with a fresh token.
      const left = this.#expiresAt - Date.now();
      if (left > 1000) {
        this.#refreshTimer = setTimeout(() => this.#refresh(), Math.min(5000, left / 2));
      }
      return;
    }
    if (this.#ws === socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: 'auth.refresh', payload: { token } }));
    }
  }

  /** Reconnects at once if waiting to retry. */
  #wake = () => {
    if (!this.#stopped && !this.#ws && this.#retryTimer !== undefined) this.#open();
  };

  #onVisible = () => {
    if (document.visibilityState === 'visible') this.#wake();
  };
}
