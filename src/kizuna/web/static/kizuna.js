// kizuna.js — the browser client for kizuna, one ES module, no build step.
//
//   import { Client } from '/static/kizuna.js';
//   const client = new Client(location.origin, { token });
//   client.on('state', (s) => console.log(s.state, s.code, s.reason, s.delay));
//   await client.connect();
//   const sub = await client.subscribe('chat:lobby');
//   sub.on('publication', (p) => console.log(p.data));
//   await client.publish('chat:lobby', { text: 'hello' });
//
// The same semantics as the Python client (kizuna.client), see docs/clients.md:
//
// 1. One connection kept alive. When it drops, reconnect after a backoff delay:
//    exponential with full jitter, uniform in [minDelay, min(maxDelay, minDelay * factor^n)]
//    after n failures in a row (defaults 500 ms, 20 s, 2, no attempt limit). The count
//    resets once a connection stayed up `stableAfter` ms.
// 2. Resubscribe every channel from the position (offset, epoch) of the last publication
//    it delivered; the server replays exactly what was missed, or says it cannot and the
//    subscription emits {type: 'subscribed', gap: true} — never a silent gap. A replayed
//    publication already delivered is dropped (exactly once).
// 3. Close codes decide: 4xxx and `disconnect` pushes with reconnect:false stop for good;
//    an expired or invalid token (3006, 4002, error 109/101 to connect) asks `getToken`
//    for a new one; anything else reconnects.
// 4. The server must speak the protocol: a malformed frame closes the connection with a
//    clear error (reported as code 1002) and the client reconnects.
//
// Times are in milliseconds in this module (the Python client uses seconds).
//
// Transports. The client speaks the native command protocol (newline-delimited JSON
// commands with ids, replies, pushes) through a Transport. WebSocket carries it as is;
// SSE + HTTP publish and long-polling translate it to HTTP (see "HTTP fallbacks" below).
// When a transport cannot open, the client tries the next one in `transports` (default
// ['websocket', 'sse', 'longpoll']) within the same attempt. A transport that failed
// `fallbackAfter` (2) times where a later one worked — refused, or dropped before
// `connect` completed — is tried last from then on, so a client behind a proxy that
// blocks WebSocket stops paying for the refusal on every reconnect.

// --- errors -------------------------------------------------------------------------------

export class KizunaError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** The server answered a command with an error reply: `code` is the numbered error (1xx). */
export class ServerRejected extends KizunaError {
  constructor(code, message) {
    super(`${code} ${message}`);
    this.code = code;
    this.serverMessage = message;
  }
}

/** The server sent something that is not the protocol; the client reconnects. */
export class MalformedFrame extends KizunaError {}

/** The connection dropped before a command's reply arrived: its outcome is unknown. */
export class ConnectionLost extends KizunaError {}

/** The client stopped for good (terminal code, gave up, or closed by the application). */
export class Disconnected extends KizunaError {
  constructor(code, reason) {
    super(`${code} ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

/** A command got no answer in time. */
export class Timeout extends KizunaError {}

class NotSent extends ConnectionLost {}
class TokenRefused extends KizunaError {}

// --- backoff ------------------------------------------------------------------------------

export class Backoff {
  constructor({ minDelay = 500, maxDelay = 20000, factor = 2, maxAttempts = null } = {}) {
    const problems = [];
    if (!(minDelay >= 0)) problems.push('minDelay must be ≥ 0');
    if (!(maxDelay >= minDelay)) problems.push('maxDelay must be ≥ minDelay');
    if (!(factor >= 1)) problems.push('factor must be ≥ 1');
    if (maxAttempts !== null && !(maxAttempts >= 1)) problems.push('maxAttempts must be ≥ 1 or null');
    if (problems.length) throw new RangeError(`invalid backoff: ${problems.join('; ')}`);
    Object.assign(this, { minDelay, maxDelay, factor, maxAttempts });
    Object.freeze(this);
  }

  /** The longest wait after `failures` failures in a row. */
  ceiling(failures) {
    return Math.min(this.maxDelay, this.minDelay * this.factor ** Math.min(failures, 64));
  }

  /** A random wait in [minDelay, ceiling(failures)] ("full jitter" above a floor). */
  delay(failures, random = Math.random) {
    return this.minDelay + random() * (this.ceiling(failures) - this.minDelay);
  }

  givesUp(failures) {
    return this.maxAttempts !== null && failures >= this.maxAttempts;
  }
}

// --- frames: what the server sends, checked ------------------------------------------------

const PREVIEW = 80;

function preview(text) {
  return JSON.stringify(text.length > PREVIEW ? `${text.slice(0, PREVIEW)}…` : text);
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isInt = (v) => Number.isSafeInteger(v);

function int(obj, name, where, minimum = 0) {
  const v = obj[name];
  if (!isInt(v) || v < minimum) {
    throw new MalformedFrame(`${where}: ${name} must be an integer ≥ ${minimum}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function str(obj, name, where) {
  const v = obj[name];
  if (typeof v !== 'string') throw new MalformedFrame(`${where}: ${name} must be a string, got ${JSON.stringify(v)}`);
  return v;
}

function bool(obj, name, where, fallback) {
  const v = name in obj ? obj[name] : fallback;
  if (typeof v !== 'boolean') throw new MalformedFrame(`${where}: ${name} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

function info(raw, where) {
  if (!isObject(raw)) throw new MalformedFrame(`${where}: info must be an object, got ${JSON.stringify(raw)}`);
  return { user: str(raw, 'user', where), client: str(raw, 'client', where) };
}

function channelOf(obj, where) {
  const channel = str(obj, 'channel', where);
  if (!channel) throw new MalformedFrame(`${where}: channel must not be empty`);
  return channel;
}

function publication(raw, channel, epoch, where) {
  if (!isObject(raw)) throw new MalformedFrame(`${where}: a publication must be an object`);
  if (!('data' in raw)) throw new MalformedFrame(`${where}: publication without data`);
  const offset = 'offset' in raw ? int(raw, 'offset', where) : 0;
  return {
    type: 'publication',
    channel,
    data: raw.data,
    offset,
    epoch: offset ? epoch : null,
    info: raw.info != null ? info(raw.info, where) : null,
  };
}

function decodePush(obj) {
  const kind = obj.push;
  const where = `${JSON.stringify(kind)} push`;
  switch (kind) {
    case 'pub': {
      const channel = channelOf(obj, where);
      const epoch = 'epoch' in obj ? str(obj, 'epoch', where) : null;
      const pub = publication(obj, channel, epoch, where);
      if (pub.offset && epoch === null) throw new MalformedFrame(`${where}: a publication with an offset must carry its epoch`);
      return pub;
    }
    case 'join':
    case 'leave':
      return { type: kind, channel: channelOf(obj, where), info: info(obj.info, where) };
    case 'unsubscribe':
      return { type: 'unsubscribed', channel: channelOf(obj, where), code: int(obj, 'code', where), reason: str(obj, 'reason', where) };
    case 'disconnect': {
      // delay_ms: a draining node's reconnect advice, spreading its clients' returns.
      const delayMs = obj.delay_ms;
      if (delayMs !== undefined && !(Number.isInteger(delayMs) && delayMs >= 0)) {
        throw new MalformedFrame(`${where}: delay_ms must be a non-negative integer`);
      }
      return { type: 'disconnect', code: int(obj, 'code', where), reason: str(obj, 'reason', where), reconnect: bool(obj, 'reconnect', where), delay: delayMs ?? null };
    }
    default:
      if (typeof kind !== 'string') throw new MalformedFrame(`push must be a string, got ${JSON.stringify(kind)}`);
      return null; // a kind from a newer server: ignored on purpose
  }
}

function decodeLine(line) {
  let obj;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new MalformedFrame(`not JSON: ${preview(line)}`);
  }
  if (!isObject(obj)) throw new MalformedFrame(`not a JSON object: ${preview(line)}`);
  if ('push' in obj) return decodePush(obj);
  if (!('id' in obj)) throw new MalformedFrame(`neither a reply (id) nor a push: ${preview(line)}`);
  const id = obj.id;
  if (!isInt(id) || id < 1) throw new MalformedFrame(`reply id must be a positive integer, got ${JSON.stringify(id)}`);
  if ('error' in obj) {
    if (!isObject(obj.error)) throw new MalformedFrame(`reply ${id}: error must be an object`);
    const where = `reply ${id} error`;
    return { type: 'error', id, code: int(obj.error, 'code', where), message: str(obj.error, 'message', where) };
  }
  if (!isObject(obj.result)) throw new MalformedFrame(`reply ${id}: result must be an object, got ${JSON.stringify(obj.result)}`);
  return { type: 'reply', id, result: obj.result };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Every message in one frame (text or ArrayBuffer), in order. Throws MalformedFrame. */
export function decodeServerFrame(frame) {
  let text = frame;
  if (typeof frame !== 'string') {
    try {
      text = utf8.decode(frame);
    } catch {
      throw new MalformedFrame('not JSON: a binary frame that is not UTF-8 text');
    }
  }
  const out = [];
  for (const line of text.split('\n')) {
    if (line.trim()) {
      const message = decodeLine(line);
      if (message) out.push(message);
    }
  }
  return out;
}

function ttlOf(result, where) {
  return bool(result, 'expires', where, false) ? int(result, 'ttl', where) : null;
}

function position(result, where) {
  return { offset: int(result, 'offset', where), epoch: str(result, 'epoch', where) };
}

export const parse = {
  connect(result) {
    const where = 'connect result';
    const ping = result.ping ?? null;
    if (ping !== null && !(typeof ping === 'number' && ping >= 0 && Number.isFinite(ping))) {
      throw new MalformedFrame(`${where}: ping must be a number ≥ 0, got ${JSON.stringify(ping)}`);
    }
    return { client: str(result, 'client', where), ttl: ttlOf(result, where), ping };
  },
  refresh: (result) => ttlOf(result, 'refresh result'),
  subscribe(result, channel) {
    const where = `subscribe result for ${JSON.stringify(channel)}`;
    if (!bool(result, 'recoverable', where, false)) return { recoverable: false, position: null, recovered: false, publications: [] };
    const pos = position(result, where);
    const recovered = bool(result, 'recovered', where, false);
    const raw = 'publications' in result ? result.publications : [];
    if (!Array.isArray(raw)) throw new MalformedFrame(`${where}: publications must be a list`);
    const pubs = raw.map((p) => publication(p, channel, pos.epoch, where));
    let previous = 0;
    for (const p of pubs) {
      if (!(previous < p.offset && p.offset <= pos.offset)) throw new MalformedFrame(`${where}: recovered offsets out of order or past the top`);
      previous = p.offset;
    }
    return { recoverable: true, position: pos, recovered, publications: pubs };
  },
  publish: (result) => ('offset' in result ? position(result, 'publish result') : null),
  history(result, channel) {
    const where = `history result for ${JSON.stringify(channel)}`;
    const pos = position(result, where);
    if (!Array.isArray(result.publications)) throw new MalformedFrame(`${where}: publications must be a list`);
    return { publications: result.publications.map((p) => publication(p, channel, pos.epoch, where)), position: pos };
  },
  presence(result) {
    if (!isObject(result.clients)) throw new MalformedFrame('presence result: clients must be an object');
    const out = {};
    for (const [id, raw] of Object.entries(result.clients)) out[id] = info(raw, 'presence result');
    return out;
  },
  presenceStats(result) {
    const where = 'presence_stats result';
    return { numClients: int(result, 'num_clients', where), numUsers: int(result, 'num_users', where) };
  },
  ignore: () => undefined,
};

// --- transports ---------------------------------------------------------------------------
//
// A Transport carries the native protocol's frames between the Client and one server:
//
//   const t = factory(endpoint, options)   // null when unusable in this environment
//   await t.open(timeoutMs)                // resolves when usable; rejects if it cannot open
//   t.send(text)                           // one command frame; throws NotSent if closed
//   t.close(code, reason)                  // idempotent; fires onclose once
//   t.onmessage = (frame) => {}            // string or ArrayBuffer, newline-delimited messages
//   t.onclose = ({code, reason}) => {}     // once, after a successful open
//
// `endpoint` is an http(s) origin such as 'http://127.0.0.1:8000' (or a ws(s):// URL).

export function endpointUrl(endpoint, path, scheme) {
  const url = new URL(endpoint, typeof location !== 'undefined' ? location.href : undefined);
  const secure = url.protocol === 'https:' || url.protocol === 'wss:';
  url.protocol = scheme === 'ws' ? (secure ? 'wss:' : 'ws:') : secure ? 'https:' : 'http:';
  if (url.pathname === '/' || url.pathname === '') url.pathname = path;
  return url.href;
}

export class WebSocketTransport {
  constructor(endpoint, options = {}) {
    this.url = endpointUrl(endpoint, options.websocketPath ?? '/connection/websocket', 'ws');
    this.name = 'websocket';
    this.onmessage = () => {};
    this.onclose = () => {};
    this._ws = null;
    this._closed = false;
  }

  open(timeoutMs) {
    return new Promise((resolve, reject) => {
      let opened = false;
      const ws = new WebSocket(this.url);
      ws.binaryType = 'arraybuffer';
      this._ws = ws;
      const timer = setTimeout(() => {
        this._finish({ code: 1006, reason: 'handshake timed out' });
        reject(new Error(`no WebSocket handshake within ${timeoutMs} ms`));
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        opened = true;
        resolve();
      };
      ws.onmessage = (event) => {
        if (!this._closed) this.onmessage(event.data);
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!opened) {
          this._closed = true;
          reject(new Error(`WebSocket closed before it opened (${event.code})`));
        } else {
          this._finish({ code: event.code, reason: event.reason || (event.code === 1006 ? 'connection lost' : '') });
        }
      };
      ws.onerror = () => {}; // a close event follows, with what little the browser tells
    });
  }

  send(text) {
    if (this._closed || !this._ws || this._ws.readyState !== 1) throw new NotSent('the connection is closed');
    this._ws.send(text);
  }

  close(code = 1000, reason = '') {
    // Browsers may only send 1000 or 3000–4999; the code the application sees is the
    // Client's own (1002, 1011...), passed to onclose here.
    if (this._ws) {
      try {
        this._ws.close(1000, reason.slice(0, 120));
      } catch {
        // already closing
      }
    }
    this._finish({ code, reason });
  }

  _finish(info) {
    if (this._closed) return;
    this._closed = true;
    if (this._ws) {
      this._ws.onmessage = null;
      try {
        if (this._ws.readyState < 2) this._ws.close(1000);
      } catch {
        // nothing left to close
      }
    }
    this.onclose(info);
  }
}

// --- HTTP fallbacks: SSE + HTTP publish, and long-polling --------------------------------
//
// When WebSocket cannot be used (refused, blocked by a proxy, or failing before `connect`
// completes), the Client keeps speaking the command protocol and one of these transports
// translates it to kizuna's HTTP endpoints (src/kizuna/transports/sse.py, longpoll.py,
// http_publish.py). The Client cannot tell the difference, so every rule above —
// positions, exactly-once delivery, recovery, gaps, backoff, token refresh — holds as is:
//
//   connect      keeps the token (sent as `Authorization: Bearer` on every request, never
//                in a URL) and answers at once: HTTP has no connection to open, so the
//                token is checked by the first request that carries it (a refusal closes
//                the transport with 4002 or 3006, which the Client answers with getToken).
//   subscribe    a *probe*: GET /connection/poll?channels=C&timeout=0, with the cursor of
//                `since` when there is one. It checks access (its error code is the reply's),
//                reads the channel's current position, and replays what `since` missed —
//                what a WebSocket subscribe reply carries (recovered and publications, or
//                recovered:false for a gap). Error 108 means "no history": SSE can still
//                carry the channel (without positions); long-polling cannot (108).
//   (SSE)        then reopens the one stream, GET /connection/sse?channels=…, with every
//                channel and a cursor built from their positions (`Last-Event-ID`), so the
//                stream resumes exactly where each channel stands. Subscribe replies are
//                sent when the new stream says `connected`.
//   (long-poll)  then polls GET /connection/poll?channels=…&cursor=…&timeout=20 in a loop;
//                each answer's cursor is the next request's.
//   unsubscribe  drops the channel and reopens the stream (or the poll) without it.
//   publish      POST /connection/publish.
//   refresh      reopens the stream (or polls at once) with the new token; a refusal is
//                the reply's error, and the old token stays.
//   history      read through the poll endpoint (a cursor at `top − limit`; where the
//                history is shorter, a binary search for where it starts).
//   presence     error 108: no HTTP endpoint carries it.
//   ping         answered by the next sign of life of the stream or poll (an event, an SSE
//                comment, a poll answer), so the Client's heartbeat finds a stalled stream
//                as on WebSocket; each sign of life also reaches the Client as an empty
//                frame, which re-arms that heartbeat.
//
// A gap found in the live stream (an SSE `gap` event, a long-poll answer's `gaps`) reaches
// the Client as an `unsubscribe` push with code 3005, which by protocol.md §5 means
// "subscribe again with `since`": the new probe answers recovered:false, and the
// application sees {type: 'subscribed', gap: true} — never a silent hole.
//
// The SSE stream is read with fetch() and a ReadableStream parser, not EventSource:
// EventSource cannot send the Authorization header (the token would travel in the URL,
// where proxies log it), hides the status and JSON error of a refused stream (a 401 that
// asks for a new token looks like a 403 that must stop), and reconnects on its own
// schedule instead of the Client's backoff.

/** Encode positions ({channel: {offset, epoch}}, a Map, or [[channel, position]]) as a cursor. */
export function encodeCursor(positions) {
  const rows = [];
  for (const [channel, pos] of entriesOf(positions)) rows.push([channel, pos.offset, pos.epoch]);
  return base64url(new TextEncoder().encode(JSON.stringify(rows)));
}

/** A cursor's positions as a Map channel → {offset, epoch}. Throws MalformedFrame. */
export function decodeCursor(text) {
  const out = new Map();
  if (!text) return out;
  let rows;
  try {
    rows = JSON.parse(utf8.decode(unbase64url(text)));
  } catch {
    throw new MalformedFrame(`malformed cursor: ${preview(text)}`);
  }
  if (!Array.isArray(rows)) throw new MalformedFrame('malformed cursor: not a list');
  for (const row of rows) {
    if (!Array.isArray(row) || row.length !== 3 || typeof row[0] !== 'string' || !isInt(row[1]) || row[1] < 0 || typeof row[2] !== 'string') {
      throw new MalformedFrame(`malformed cursor row: ${preview(String(JSON.stringify(row)))}`);
    }
    out.set(row[0], { offset: row[1], epoch: row[2] });
  }
  return out;
}

function entriesOf(positions) {
  if (positions instanceof Map || Array.isArray(positions)) return positions;
  return Object.entries(positions);
}

function base64url(bytes) {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function unbase64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error('not base64url');
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** The `exp` claim of a JWT (seconds since the epoch), or null. Not verified: the server does that. */
export function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  try {
    const claims = JSON.parse(utf8.decode(unbase64url(token.split('.')[1] ?? '')));
    return isObject(claims) && typeof claims.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp : null;
  } catch {
    return null;
  }
}

/**
 * An incremental parser for a text/event-stream body (the WHATWG "event stream
 * interpretation"): feed it decoded text as it arrives; each call returns what that text
 * completed, in order — {type: 'event', event, data, id} and {type: 'comment', text}.
 * Lines end with CRLF, LF or CR (also split across chunks); `data` lines join with '\n';
 * an event without data is not dispatched; `id` persists until changed (lastEventId).
 */
export class SSEParser {
  constructor() {
    this.lastEventId = '';
    this._buffer = '';
    this._data = [];
    this._event = '';
    this._afterCR = false;
    this._started = false;
  }

  feed(text) {
    const out = [];
    if (!this._started && text.length) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this._afterCR && text.startsWith('\n')) text = text.slice(1); // the LF of a split CRLF
    if (text.length) this._afterCR = false;
    const buffer = this._buffer + text;
    const breaks = /\r\n|\r|\n/g;
    let start = 0;
    for (let m = breaks.exec(buffer); m; m = breaks.exec(buffer)) {
      if (m[0] === '\r' && m.index === buffer.length - 1) this._afterCR = true;
      this._line(buffer.slice(start, m.index), out);
      start = m.index + m[0].length;
    }
    this._buffer = buffer.slice(start);
    return out;
  }

  _line(line, out) {
    if (line === '') {
      if (this._data.length) out.push({ type: 'event', event: this._event || 'message', data: this._data.join('\n'), id: this.lastEventId });
      this._data = [];
      this._event = '';
      return;
    }
    if (line.startsWith(':')) {
      out.push({ type: 'comment', text: line.slice(1).replace(/^ /, '') });
      return;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'data') this._data.push(value);
    else if (field === 'event') this._event = value;
    else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
    // `retry` and unknown fields are ignored: the Client owns reconnect timing.
  }
}

/** The URL of `path` beside an endpoint ('http://h:8000', 'wss://h/prefix/connection/websocket'…). */
export function httpUrl(endpoint, path) {
  const url = new URL(endpointUrl(endpoint, '/', 'http'));
  const prefix = url.pathname.replace(/\/connection\/websocket\/?$/, '').replace(/\/+$/, '');
  return new URL(`${prefix}${path}`, url.origin).href;
}

const AUTH_CLOSE = { 101: 4002, 109: 3006 }; // error code → the close code the Client acts on
const GAP_CODE = 3005; // "insufficient state": subscribe again from the position
const GAP_REASON = 'insufficient state: the history no longer reaches back';
const MAX_HISTORY = 1000; // the server's default history_max_limit, for `reverse` without a limit

function errorOf(body) {
  const error = isObject(body) ? body.error : null;
  return isObject(error) && isInt(error.code) && typeof error.message === 'string' ? error : null;
}

function randomId() {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function ttlFields(token) {
  const exp = tokenExpiry(token);
  return exp === null ? { expires: false } : { expires: true, ttl: Math.max(0, Math.floor(exp - Date.now() / 1000)) };
}

/** A publication push in the form the publications of subscribe and history results have. */
function stored(push) {
  const pub = { data: push.data, offset: push.offset };
  if (push.info != null) pub.info = push.info;
  return pub;
}

async function readJson(response) {
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) };
  } catch {
    return { status: response.status, body: null }; // not JSON: a proxy's page, most likely
  }
}

/**
 * What the SSE and long-poll transports share: the command protocol answered over HTTP.
 * A subclass carries the live channels (`_restart(gen)`) and decides when a subscribe
 * reply may go (`_accepted`): never before its channel is on the wire.
 */
class HttpTransport {
  constructor(endpoint, options, name, path) {
    this.name = name;
    this.onmessage = () => {};
    this.onclose = () => {};
    this.token = null;
    this.channels = new Map(); // on the wire: channel → {position: {offset, epoch} | null}
    this.clientId = `${name}-${randomId()}`;
    this._path = httpUrl(endpoint, path);
    this._pollUrl = httpUrl(endpoint, options.pollPath ?? '/connection/poll');
    this._publishUrl = httpUrl(endpoint, options.publishPath ?? '/connection/publish');
    this._requestTimeout = options.timeout ?? 10000;
    this._subscribing = new Map(); // channel → the subscribe command whose probe runs
    this._controllers = new Set();
    this._refreshing = null; // {id, token, previous} while a new token is tried on the wire
    this._pings = [];
    this._out = [];
    this._touched = false;
    this._flushQueued = false;
    this._restartQueued = false;
    this._everWorked = false; // once the wire delivered, its failures are the network's
    this._gen = 0; // which wire (stream or poll loop) is the current one
    this._closed = false;
  }

  // --- the Transport contract ---

  /**
   * Usable from here? kizuna answers a request without channels with 400 and error 107
   * before it looks at anything else; a proxy that blocks the path, or a server that is
   * not kizuna, answers something else, and the Client tries its next transport.
   */
  async open(timeoutMs) {
    let status = 0;
    let error = null;
    try {
      ({ status, body: error } = await this._fetch(this._path, { timeoutMs, auth: false }, readJson));
    } finally {
      if (!(status === 400 && errorOf(error)?.code === 107)) this._closed = true;
    }
    if (this._closed) throw new Error(`${this._path} answered HTTP ${status}, not kizuna`);
  }

  send(text) {
    if (this._closed) throw new NotSent('the connection is closed');
    for (const line of text.split('\n')) {
      if (line.trim()) this._command(JSON.parse(line));
    }
  }

  close(code = 1000, reason = '') {
    this._finish({ code, reason });
  }

  // --- commands ---

  _command({ id, method, params = {} }) {
    switch (method) {
      case 'connect':
        this.token = typeof params.token === 'string' && params.token ? params.token : null;
        this._reply(id, { client: this.clientId, ...ttlFields(this.token) });
        break;
      case 'subscribe':
        this._subscribe(id, params);
        break;
      case 'unsubscribe':
        this._unsubscribe(id, params.channel);
        break;
      case 'publish':
        this._publish(id, params);
        break;
      case 'refresh':
        this._refresh(id, params.token);
        break;
      case 'history':
        this._history(id, params).catch((error) => this._fail(1006, `history: ${error.message}`));
        break;
      case 'ping':
        if (this.channels.size) this._ping(id);
        else this._reply(id, {}); // no wire to stall
        break;
      case 'presence':
      case 'presence_stats':
        this._error(id, 108, `${method} is not available over ${this.name}`);
        break;
      default:
        this._error(id, 104, 'method not found');
    }
  }

  _subscribe(id, { channel, since = null }) {
    if (typeof channel !== 'string' || !channel) return this._error(id, 107, 'channel is required');
    if (this.channels.has(channel) || this._subscribing.has(channel)) return this._error(id, 105, 'already subscribed');
    this._subscribing.set(channel, id);
    this._probe(channel, since)
      .then((outcome) => {
        if (this._closed) return;
        if (this._subscribing.get(channel) !== id) return this._error(id, 110, 'unsubscribed while subscribing');
        this._subscribing.delete(channel);
        if (outcome.kind !== 'ok') return this._answered(id, outcome, channel);
        if (!outcome.recoverable && (since || !this._carriesLive)) {
          return this._error(id, 108, since ? 'since given in a namespace without history' : `${this.name} needs a channel with history`);
        }
        let result = {};
        if (outcome.recoverable) {
          const { position, gap, publications } = outcome;
          result = { recoverable: true, offset: position.offset, epoch: position.epoch };
          if (since) Object.assign(result, gap ? { recovered: false } : { recovered: true, publications: publications.map(stored) });
        }
        this.channels.set(channel, { position: outcome.recoverable ? outcome.position : null });
        this._accepted(id, channel, result);
      })
      .catch((error) => this._fail(1006, `subscribe ${channel}: ${error.message}`))
      .finally(() => this._wireChanged());
  }

  _unsubscribe(id, channel) {
    if (this.channels.delete(channel) || this._subscribing.delete(channel)) {
      this._reply(id, {});
      this._wireChanged();
    } else {
      this._error(id, 110, 'not subscribed');
    }
  }

  async _publish(id, { channel, data, idempotency_key: key }) {
    const body = { channel, data };
    if (key !== undefined) body.idempotency_key = key;
    const token = this.token;
    let answer;
    try {
      const headers = { 'Content-Type': 'application/json' };
      answer = await this._fetch(this._publishUrl, { method: 'POST', body: JSON.stringify(body), headers }, readJson);
    } catch (error) {
      // Sent, with no answer: it may or may not be published (the Client says ConnectionLost).
      return this._fail(1006, `publish: ${error.message}`);
    }
    if (answer.status === 200 && isObject(answer.body?.result)) return this._reply(id, answer.body.result);
    const error = errorOf(answer.body);
    if (!error) return this._fail(1006, `publish: HTTP ${answer.status} without a kizuna answer`);
    this._error(id, error.code, error.message);
    if (AUTH_CLOSE[error.code]) this._refused(error.code, error.message, token);
  }

  _refresh(id, token) {
    if (typeof token !== 'string' || !token) return this._error(id, 107, 'token is required');
    if (!this.channels.size && !this._subscribing.size) {
      this.token = token; // nothing to try it on now: the next request checks it
      return this._reply(id, ttlFields(token));
    }
    if (this._refreshing) this._error(this._refreshing.id, 107, 'replaced by a newer refresh');
    this._refreshing = { id, token, previous: this._refreshing?.previous ?? this.token };
    this.token = token;
    this._wireChanged();
  }

  /** The wire works with `token`: if that is a refresh's, answer it. */
  _workedWith(token) {
    const refreshing = this._refreshing;
    if (!refreshing || refreshing.token !== token) return;
    this._refreshing = null;
    this._reply(refreshing.id, ttlFields(token));
  }

  /**
   * history(channel, {limit, since, reverse}) through the poll endpoint: read the top,
   * then from `since` (or `top − limit`); where the history no longer reaches back that
   * far, binary-search the first offset it still holds. Publications past the top read
   * first are left out, so the result's position is where they end.
   */
  async _history(id, { channel, limit, since = null, reverse = false }) {
    const failed = (outcome) => {
      if (outcome.kind !== 'ok') this._answered(id, outcome, channel);
      else if (!outcome.recoverable) this._error(id, 108, 'history is off in this namespace');
      else return false;
      return true;
    };
    const top = await this._probe(channel, null);
    if (failed(top)) return;
    const { offset: last, epoch } = top.position;
    const reply = (pubs) => this._reply(id, { publications: pubs.map(stored), offset: last, epoch });
    if (limit === 0 || (since && (since.epoch !== epoch || since.offset >= last))) return reply([]);
    const want = limit ?? (reverse ? MAX_HISTORY : undefined);
    const read = (offset) => this._probe(channel, { offset, epoch });
    let start = since ? since.offset : reverse ? Math.max(0, last - want) : 0;
    let page = await read(start);
    if (failed(page)) return;
    if (page.gap) {
      let lo = start + 1;
      let hi = last; // reading after `last` is never a gap (in this epoch)
      while (lo < hi) {
        const mid = Math.floor((lo + hi) / 2);
        const probe = await read(mid);
        if (failed(probe)) return;
        if (probe.gap) lo = mid + 1;
        else hi = mid;
      }
      start = lo;
      page = await read(start);
      if (failed(page)) return;
      if (page.gap) return reply([]); // the epoch changed meanwhile
    }
    let pubs = page.publications.filter((p) => p.offset <= last);
    if (reverse) pubs.reverse();
    if (want !== undefined) pubs = pubs.slice(0, want);
    reply(pubs);
  }

  /** Answer command `id` after a probe that was not 'ok'. */
  _answered(id, outcome, channel) {
    if (outcome.kind === 'lost') return this._fail(1006, `${channel}: ${outcome.reason}`, !this._everWorked);
    if (AUTH_CLOSE[outcome.code]) {
      if (this._refused(outcome.code, outcome.message, outcome.token)) this._error(id, 113, `try again: ${outcome.message}`);
      return; // else the transport closed: the Client gets a new token, and subscribes again
    }
    this._error(id, outcome.code, outcome.message);
  }

  /**
   * The token `token` was refused (101, 109). If it was a refresh's, that is the
   * refresh's answer, the old token stays, and this returns true; otherwise the transport
   * closes with 4002 or 3006, and the Client asks for a new token.
   */
  _refused(code, message, token) {
    const refreshing = this._refreshing;
    if (refreshing && refreshing.token === token) {
      this._refreshing = null;
      if (this.token === token) this.token = refreshing.previous;
      this._error(refreshing.id, code, message);
      this._wireChanged();
      return true;
    }
    if (token === this.token) this._fail(AUTH_CLOSE[code], message);
    return !this._closed;
  }

  /** The wire was refused with `error`: what it means for the whole transport. */
  _wireRefused(status, error, token) {
    if (!error) return this._fail(1006, `${this.name} refused: HTTP ${status} without a kizuna answer`, !this._everWorked);
    if (AUTH_CLOSE[error.code]) return this._refused(error.code, error.message, token);
    if ([102, 103, 108].includes(error.code)) return this._recheck(error.code, error.message);
    if (error.code === 107) return this._fail(4001, `${this.name} refused: ${error.message}`); // e.g. a cursor past the server's limit
    return this._fail(3008, `${this.name} refused: ${error.code} ${error.message}`); // 113…: the Client backs off
  }

  /** Some channel was refused on the wire (102/103/108): probe each, end those refused. */
  async _recheck(code, message) {
    const gen = this._gen;
    const refused = [];
    for (const [channel, entry] of this.channels) {
      const outcome = await this._probe(channel, entry.position);
      if (this._closed || gen !== this._gen) return;
      if (outcome.kind === 'lost') return this._fail(1006, outcome.reason, !this._everWorked);
      if (outcome.kind === 'refused' && AUTH_CLOSE[outcome.code]) return this._refused(outcome.code, outcome.message, outcome.token);
      if (outcome.kind === 'refused') refused.push([channel, outcome.code, outcome.message]);
      else if (!outcome.recoverable && !this._carriesLive) refused.push([channel, 108, 'no history to poll']);
    }
    if (!refused.length) return this._fail(3008, `${this.name} refused: ${code} ${message}`);
    for (const [channel, why, reason] of refused) {
      this.channels.delete(channel);
      if (!this._reject(channel, why, reason)) this._push({ push: 'unsubscribe', channel, code: why, reason });
    }
    this._wireChanged();
  }

  /** Answer ping `id` with the wire's next sign of life. */
  _ping(id) {
    this._pings.push(id);
  }

  /** A subscribe reply held for `channel` becomes an error instead; false if none was held. */
  _reject() {
    return false;
  }

  // --- HTTP ---

  /**
   * One poll answered at once (timeout=0) for one channel, from `since` or from its top:
   * {kind: 'ok', recoverable, position, publications, gap} | {kind: 'refused', code,
   * message, token} | {kind: 'lost', reason}.
   */
  async _probe(channel, since) {
    const url = new URL(this._pollUrl);
    url.searchParams.set('channels', channel);
    url.searchParams.set('timeout', '0');
    if (since) url.searchParams.set('cursor', encodeCursor([[channel, since]]));
    const token = this.token;
    let answer;
    try {
      answer = await this._fetch(url.href, {}, readJson);
    } catch (error) {
      return { kind: 'lost', reason: error.message };
    }
    if (answer.status === 200) {
      const body = answer.body;
      let position = null;
      try {
        position = decodeCursor(typeof body?.cursor === 'string' ? body.cursor : '').get(channel);
      } catch {
        // a cursor that is not one: reported below
      }
      if (!position || !Array.isArray(body.publications) || !Array.isArray(body.gaps)) {
        return { kind: 'lost', reason: `${this._pollUrl} answered without a cursor for ${channel}` };
      }
      const publications = body.publications.filter((p) => isObject(p) && p.channel === channel);
      return { kind: 'ok', recoverable: true, position, publications, gap: body.gaps.includes(channel) };
    }
    const error = errorOf(answer.body);
    if (!error) return { kind: 'lost', reason: `HTTP ${answer.status} without a kizuna answer` };
    if (error.code === 108) return { kind: 'ok', recoverable: false };
    return { kind: 'refused', code: error.code, message: error.message, token };
  }

  /** fetch() with this transport's token and a deadline, aborted by close(); `read` the response. */
  async _fetch(url, { method = 'GET', body, headers = {}, timeoutMs = this._requestTimeout, auth = true, wire = false }, read) {
    if (this._closed) throw new Error('the transport is closed');
    const controller = new AbortController();
    controller.wire = wire; // the stream or poll a restart replaces
    this._controllers.add(controller);
    const timer = timeoutMs ? setTimeout(() => controller.abort(new Timeout(`no answer within ${timeoutMs} ms`)), timeoutMs) : null;
    const all = { ...headers };
    if (auth && this.token) all.Authorization = `Bearer ${this.token}`;
    try {
      const response = await fetch(url, { method, body, headers: all, cache: 'no-store', credentials: 'same-origin', signal: controller.signal });
      if (wire) clearTimeout(timer); // a stream lives on; its silence is the heartbeat's business
      return await read(response);
    } catch (error) {
      const reason = controller.signal.reason;
      throw controller.signal.aborted && reason instanceof Error ? reason : error;
    } finally {
      clearTimeout(timer);
      this._controllers.delete(controller);
    }
  }

  _abortWire() {
    for (const controller of this._controllers) if (controller.wire) controller.abort(new Error('replaced'));
  }

  // --- delivery to the Client: in order, and never inside send() ---

  _reply(id, result) {
    this._deliver(JSON.stringify({ id, result }));
  }

  _error(id, code, message) {
    this._deliver(JSON.stringify({ id, error: { code, message } }));
  }

  _push(push) {
    this._deliver(JSON.stringify(push));
  }

  /** The wire showed life: answer pings and re-arm the Client's heartbeat. */
  _alive() {
    this._everWorked = true;
    for (const id of this._pings) this._reply(id, {});
    this._pings = [];
    this._touched = true;
    this._deliver(null);
  }

  _deliver(line) {
    if (line !== null) this._out.push(line);
    if (this._flushQueued) return;
    this._flushQueued = true;
    queueMicrotask(() => {
      this._flushQueued = false;
      const lines = this._out;
      const touched = this._touched;
      this._out = [];
      this._touched = false;
      if (!this._closed && (lines.length || touched)) this.onmessage(lines.join('\n'));
    });
  }

  /** The channel set or the token changed: restart the wire once no probe runs. */
  _wireChanged() {
    if (this._restartQueued || this._closed) return;
    this._restartQueued = true;
    queueMicrotask(() => {
      this._restartQueued = false;
      if (this._closed || this._subscribing.size) return; // the last probe calls again
      this._gen += 1;
      this._abortWire();
      if (this.channels.size) {
        this._restart(this._gen);
        return;
      }
      this._workedWith(this.token); // no wire to try a new token on: the next request will
      for (const id of this._pings) this._reply(id, {});
      this._pings = [];
    });
  }

  _positions() {
    const out = [];
    for (const [channel, entry] of this.channels) if (entry.position) out.push([channel, entry.position]);
    return out;
  }

  _fail(code, reason, broken = false) {
    this._finish({ code, reason, broken });
  }

  _finish(info) {
    if (this._closed) return;
    this._closed = true;
    this._gen += 1;
    for (const controller of this._controllers) controller.abort(new Error('the transport is closed'));
    this._controllers.clear();
    this._out = [];
    this.onclose(info);
  }
}

/** SSE carries what the server sends; POST /connection/publish what the client sends. */
export class SSETransport extends HttpTransport {
  constructor(endpoint, options = {}) {
    super(endpoint, options, 'sse', options.ssePath ?? '/connection/sse');
    this._openTimeout = options.openTimeout ?? 10000;
    this._carriesLive = true; // channels without history ride the stream too (no positions)
    this._held = []; // subscribe replies waiting for the stream that carries their channel
    this._streamClient = null; // the server's id of the current stream's connection
    this._ownJoins = new Map(); // channel → the `join` push of the current stream's connection
  }

  _accepted(id, channel, result) {
    this._held.push({ id, channel, result });
  }

  _reject(channel, code, message) {
    const held = this._held.find((h) => h.channel === channel);
    if (!held) return false;
    this._held = this._held.filter((h) => h !== held);
    this._error(held.id, code, message);
    return true;
  }

  _restart(gen) {
    this._stream(gen).catch((error) => {
      if (gen === this._gen) this._fail(1006, `the SSE stream failed: ${error.message}`, !this._everWorked);
    });
  }

  async _stream(gen) {
    // The old stream's connection left every channel: others got `leave`, so does the Client.
    for (const join of this._ownJoins.values()) this._push({ ...join, push: 'leave' });
    this._ownJoins.clear();
    this._streamClient = null;
    const url = new URL(this._path);
    url.searchParams.set('channels', [...this.channels.keys()].join(','));
    const headers = { Accept: 'text/event-stream' };
    const positions = this._positions();
    if (positions.length) headers['Last-Event-ID'] = encodeCursor(positions);
    const token = this.token;
    let connected = false;
    const silent = setTimeout(() => {
      if (!connected && gen === this._gen) this._fail(1006, `no SSE event within ${this._openTimeout} ms (a buffering proxy?)`, !this._everWorked);
    }, this._openTimeout);
    try {
      await this._fetch(url.href, { headers, timeoutMs: this._openTimeout, wire: true }, async (response) => {
        if (gen !== this._gen) return response.body?.cancel();
        if (response.status !== 200) {
          const { body } = await readJson(response);
          if (gen === this._gen) this._wireRefused(response.status, errorOf(body), token);
          return undefined;
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SSEParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (gen !== this._gen) return reader.cancel().catch(() => {});
          if (done) return this._fail(1006, 'the SSE stream ended', !this._everWorked);
          for (const item of parser.feed(decoder.decode(value, { stream: true }))) {
            if (item.type === 'event' && item.event === 'connected') {
              connected = true;
              this._releaseHeld();
              this._workedWith(token);
            }
            this._onItem(item);
            if (gen !== this._gen) return reader.cancel().catch(() => {});
          }
        }
      });
    } finally {
      clearTimeout(silent);
    }
  }

  _releaseHeld() {
    for (const { id, result } of this._held) this._reply(id, result);
    this._held = [];
  }

  _onItem(item) {
    if (item.type === 'event') {
      let push = null;
      try {
        push = JSON.parse(item.data);
      } catch {
        // passed on as is below: the Client refuses it as a malformed frame
      }
      const entry = isObject(push) ? this.channels.get(push.channel) : undefined;
      switch (item.event) {
        case 'pub':
          if (entry && isInt(push.offset) && typeof push.epoch === 'string') entry.position = { offset: push.offset, epoch: push.epoch };
          this._deliver(item.data);
          break;
        case 'connected':
          this._streamClient = isObject(push) && typeof push.client === 'string' ? push.client : null;
          break;
        case 'join':
          if (entry && isObject(push.info) && push.info.client === this._streamClient) this._ownJoins.set(push.channel, push);
          this._deliver(item.data);
          break;
        case 'leave':
        case 'disconnect':
          this._deliver(item.data);
          break;
        case 'gap':
          if (entry) this._push({ push: 'unsubscribe', channel: push.channel, code: GAP_CODE, reason: GAP_REASON });
          break;
        case 'subscribe_error': {
          const code = isInt(push?.code) ? push.code : 100;
          const reason = `subscribe ${push?.channel}: ${code} ${push?.message ?? ''}`;
          if (TRANSIENT_ERRORS.has(code)) return this._fail(3008, reason); // the Client backs off
          if (entry) {
            this.channels.delete(push.channel);
            this._push({ push: 'unsubscribe', channel: push.channel, code, reason });
            this._wireChanged();
          }
          break;
        }
        default:
          break; // an event of a newer server
      }
    }
    this._alive(); // comments too: the server's heartbeat
  }
}

/** GET /connection/poll in a loop carries what the server sends; POST /connection/publish the rest. */
export class LongPollTransport extends HttpTransport {
  constructor(endpoint, options = {}) {
    super(endpoint, options, 'longpoll', options.pollPath ?? '/connection/poll');
    this._pollTimeout = options.pollTimeout ?? 20000;
    this._carriesLive = false; // a poll reads history: a channel without it cannot be polled
    this._quick = false;
  }

  _accepted(id, channel, result) {
    this._reply(id, result);
  }

  /** A poll answered at once is a real round trip over the wire, not a wait for the held one. */
  _ping(id) {
    this._pings.push(id);
    this._quick = true;
    this._wireChanged();
  }

  _restart(gen) {
    this._loop(gen).catch((error) => {
      if (gen === this._gen) this._fail(1006, `poll: ${error.message}`, !this._everWorked);
    });
  }

  async _loop(gen) {
    let wait = this._refreshing || this._quick ? 0 : this._pollTimeout; // a new token or a ping: at once
    this._quick = false;
    while (gen === this._gen) {
      const url = new URL(this._pollUrl);
      url.searchParams.set('channels', [...this.channels.keys()].join(','));
      url.searchParams.set('cursor', encodeCursor(this._positions()));
      url.searchParams.set('timeout', String(wait / 1000));
      const token = this.token;
      const answer = await this._fetch(url.href, { timeoutMs: wait + this._requestTimeout, wire: true }, readJson);
      if (gen !== this._gen) return;
      wait = this._pollTimeout;
      if (answer.status !== 200) return this._wireRefused(answer.status, errorOf(answer.body), token);
      const { publications, cursor, gaps } = answer.body ?? {};
      let positions = null;
      try {
        positions = decodeCursor(typeof cursor === 'string' ? cursor : '');
      } catch {
        // reported below
      }
      if (!positions || !Array.isArray(publications) || !Array.isArray(gaps)) {
        return this._fail(1006, 'a poll answer without publications, cursor and gaps', !this._everWorked);
      }
      this._workedWith(token);
      for (const pub of publications) this._push(pub);
      for (const [channel, entry] of this.channels) {
        if (positions.has(channel)) entry.position = positions.get(channel);
      }
      for (const channel of gaps) {
        if (this.channels.has(channel)) this._push({ push: 'unsubscribe', channel, code: GAP_CODE, reason: GAP_REASON });
      }
      this._alive();
    }
  }
}

// The registry the Client picks transports from, in the order of its `transports` option.
// A factory returns null where its transport cannot work (no fetch, no streams).
const canFetch = () => typeof fetch === 'function' && typeof AbortController === 'function' && typeof TextDecoder === 'function';

export const TRANSPORTS = {
  websocket: (endpoint, options) =>
    typeof WebSocket === 'undefined' ? null : new WebSocketTransport(endpoint, options),
  sse: (endpoint, options) =>
    canFetch() && typeof ReadableStream === 'function' ? new SSETransport(endpoint, options) : null,
  longpoll: (endpoint, options) => (canFetch() ? new LongPollTransport(endpoint, options) : null),
};

/** Plug a transport in (or replace one) by name. */
export function registerTransport(name, factory) {
  TRANSPORTS[name] = factory;
}

// --- subscription -------------------------------------------------------------------------

class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Listen to `type`; returns a function that stops listening. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, value) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(value);
      } catch (error) {
        console.error(`kizuna: a '${type}' listener failed`, error);
      }
    }
  }
}

/**
 * One channel subscription: an ordered stream of events, each an object with `type`:
 * 'subscribed' {recoverable, position, since, resubscribed, recovered, gap, missed},
 * 'publication' {data, offset, epoch, info}, 'join' / 'leave' {info}, 'unsubscribed' {code, reason}.
 * Listen with on(type, fn) (or on('event', fn) for all), pass a `handler` (awaited in
 * order), or iterate: `for await (const event of sub)`.
 */
export class Subscription extends Emitter {
  constructor(client, channel, { since = null, handler = null } = {}) {
    super();
    this.channel = channel;
    this.state = 'subscribing';
    this.position = since;
    this.recoverable = false;
    this.everSubscribed = false;
    this.sentIn = null;
    this.retries = 0;
    this._client = client;
    this._handler = handler;
    this._chain = Promise.resolve();
    this._queue = [];
    this._waiter = null;
    this._ended = false;
    this._endError = null;
    this._sinceSent = null;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(() => {});
  }

  unsubscribe() {
    return this._client.unsubscribe(this.channel);
  }

  [Symbol.asyncIterator]() {
    if (this._handler) throw new KizunaError('this subscription has a handler; it cannot also be iterated');
    return { next: () => this._next(), [Symbol.asyncIterator]() { return this; } };
  }

  async _next() {
    for (;;) {
      if (this._queue.length) return { value: this._queue.shift(), done: false };
      if (this._ended) {
        if (this._endError) throw this._endError;
        return { value: undefined, done: true };
      }
      await new Promise((resolve) => {
        this._waiter = resolve;
      });
    }
  }

  _push(event) {
    if (this._ended) return;
    this._emit(event.type, event);
    this._emit('event', event);
    if (this._handler) {
      const handler = this._handler;
      this._chain = this._chain.then(() => handler(event)).catch((error) => {
        console.error(`kizuna: the handler of ${this.channel} failed`, error);
      });
    } else {
      this._queue.push(event);
    }
    this._wake();
  }

  _wake() {
    const waiter = this._waiter;
    this._waiter = null;
    if (waiter) waiter();
  }

  subscribeParams() {
    const params = { channel: this.channel };
    const since = this.recoverable || !this.everSubscribed ? this.position : null;
    this._sinceSent = since;
    if (since) params.since = { offset: since.offset, epoch: since.epoch };
    return params;
  }

  onSubscribed(result) {
    const since = this._sinceSent;
    const resubscribed = this.everSubscribed;
    const recovered = result.recovered && since !== null;
    const gap = (since !== null && !recovered) || (resubscribed && !result.recoverable);
    this.recoverable = result.recoverable;
    this.state = 'subscribed';
    this.retries = 0;
    this.everSubscribed = true;
    if (!recovered) this.position = result.position;
    this._push({
      type: 'subscribed',
      channel: this.channel,
      recoverable: result.recoverable,
      position: result.position,
      since,
      resubscribed,
      recovered,
      gap,
      missed: recovered ? result.publications.length : 0,
    });
    for (const pub of result.publications) this.onPublication(pub);
    if (result.position) this.position = result.position;
    this._resolveReady(this);
  }

  /**
   * Deliver `pub` unless it is a duplicate. Returns false when it lies past a hole in the
   * stream (offsets are consecutive within an epoch): it is not delivered, and the client
   * subscribes again from the position, which replays the hole or reports a gap.
   */
  onPublication(pub) {
    const pos = this.position;
    if (pub.offset && pub.epoch !== null && pos) {
      if (pub.epoch === pos.epoch) {
        if (pub.offset <= pos.offset) return true; // a duplicate
        if (pub.offset > pos.offset + 1) return false;
      } else if (pub.offset > 1) {
        return false; // a new epoch, but not from its start
      }
    }
    if (pub.offset && pub.epoch !== null) this.position = { offset: pub.offset, epoch: pub.epoch };
    this._push(pub);
    return true;
  }

  onJoinLeave(event) {
    this._push(event);
  }

  onConnectionLost() {
    if (this.state === 'subscribed') this.state = 'subscribing';
    this.retries = 0;
    this.sentIn = null;
  }

  onRejected(error) {
    this._rejectReady(error);
    this.end(null, null);
  }

  end(error, announce) {
    if (this._ended) return;
    if (announce) this._push(announce);
    this.state = 'ended';
    this._ended = true;
    this._endError = error;
    this._rejectReady(error ?? new KizunaError(`${this.channel} unsubscribed`));
    this._wake();
  }

  /** Resolves when a handler has finished with every event pushed so far. */
  drained() {
    return this._chain;
  }
}

// --- the client ---------------------------------------------------------------------------

const CLOSE_NORMAL = 1000;
const CLOSE_PROTOCOL_ERROR = 1002;
const CLOSE_ABNORMAL = 1006;
const CLOSE_PING_TIMEOUT = 1011;
const UNAUTHORIZED = 4002;
const TOKEN_EXPIRED = 3006;
const SERVER_ERROR = 3008;
const TRANSIENT_ERRORS = new Set([100, 111, 113]);
const AUTH_ERRORS = { 101: UNAUTHORIZED, 109: TOKEN_EXPIRED };

/** The reconnect rule for any close code: 4000–4999 must not reconnect. */
export const reconnectAllowed = (code) => !(code >= 4000 && code <= 4999);

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

class Session {
  constructor(transport, url) {
    this.transport = transport;
    this.url = url;
    this.pending = new Map();
    this.localClose = null;
    this.closeInfo = null;
    this.clientId = null;
    this.connectedAt = 0;
    this.closed = false;
    this.timers = new Set();
    this.ended = new Promise((resolve) => {
      this._resolveEnded = resolve;
    });
  }

  later(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  cancel(timer) {
    clearTimeout(timer);
    this.timers.delete(timer);
  }
}

/**
 * A kizuna client. `endpoints` is an origin ('http://host:8000'), a ws(s):// URL, or a list
 * of them (nodes of one cluster; each retry after a failure tries the next).
 *
 * Options (times in ms): token, getToken (async () => token | null: called when there is
 * no token yet and whenever the server reports it expired or invalid; null stops the
 * client), name, backoff ({minDelay, maxDelay, factor, maxAttempts} or a Backoff),
 * stableAfter (5000), timeout (10000, per command), openTimeout (10000), pingInterval
 * (silence after which the client pings; default: the server's `ping` interval from the
 * connect result, else 25000; 0 turns it off), pingTimeout (10000),
 * refreshRatio (0.8 of the token's lifetime), transports (['websocket', 'sse', 'longpoll']),
 * fallbackAfter (2: failures before a transport is tried last), websocketPath, ssePath,
 * pollPath, publishPath, pollTimeout (20000: how long the server may hold a long poll),
 * random (a () => [0, 1) function, for tests).
 */
export class Client extends Emitter {
  constructor(endpoints, options = {}) {
    super();
    this.endpoints = Array.isArray(endpoints) ? [...endpoints] : [endpoints];
    if (!this.endpoints.length) throw new RangeError('at least one endpoint is required');
    this.options = options;
    this.backoff = options.backoff instanceof Backoff ? options.backoff : new Backoff(options.backoff ?? {});
    this.stableAfter = options.stableAfter ?? 5000;
    this.timeout = options.timeout ?? 10000;
    this.openTimeout = options.openTimeout ?? 10000;
    this.pingInterval = options.pingInterval ?? null; // null: the server's `ping` interval
    this.pingTimeout = options.pingTimeout ?? 10000;
    this.refreshRatio = options.refreshRatio ?? 0.8;
    this.transportNames = options.transports ?? ['websocket', 'sse', 'longpoll'];
    this.fallbackAfter = options.fallbackAfter ?? 2;
    this._transportOrder = [...this.transportNames]; // a transport that keeps failing moves last
    this._transportFailures = new Map();
    this.state = 'disconnected';
    this.clientId = null;
    this.transport = null;
    this.stopped = null;
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._rejected = null;
    this._random = options.random ?? Math.random;
    this._subs = new Map();
    this._session = null;
    this._connected = null; // the session commands may use
    this._connectWaiters = new Set();
    this._running = null;
    this._first = null;
    this._closing = false;
    this._nextId = 0;
    this._wake = null;
  }

  // --- lifecycle ---

  /** Start; resolves once connected, rejects with Disconnected if it stops for good. */
  connect() {
    if (this.stopped) return Promise.reject(this.stopped);
    if (!this._running) {
      this._first = new Promise((resolve, reject) => {
        this._resolveFirst = resolve;
        this._rejectFirst = reject;
      });
      this._first.catch(() => {});
      this._running = this._run();
    }
    return this._first;
  }

  /** Close and end every subscription (their iterators finish quietly). */
  async close() {
    if (!this._closing) {
      this._closing = true;
      if (this._wake) this._wake();
      const session = this._session;
      if (session) {
        session.localClose = { code: CLOSE_NORMAL, reason: 'client closed', reconnect: false };
        session.transport.close(CLOSE_NORMAL, 'client closed');
      }
      if (!this._running) this._stop({ code: CLOSE_NORMAL, reason: 'client closed', reconnect: false });
    }
    if (this._running) await this._running;
  }

  // --- commands ---

  /** Subscribe; resolves once the server accepted (rejects with ServerRejected if not). */
  async subscribe(channel, { since = null, handler = null } = {}) {
    if (this.stopped) throw this.stopped;
    if (!this._running) throw new KizunaError('call connect() first');
    if (this._subs.has(channel)) throw new KizunaError(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, { since, handler });
    this._subs.set(channel, sub);
    const session = this._session;
    if (session && session.clientId !== null) this._sendSubscribe(session, sub);
    try {
      await withTimeout(sub.ready, this.timeout, `no answer to subscribe ${channel}`);
    } catch (error) {
      if (this._subs.get(channel) === sub) this._subs.delete(channel);
      sub.end(null, null);
      throw error;
    }
    return sub;
  }

  async unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (!sub) return;
    this._subs.delete(channel);
    const wasSubscribed = sub.state === 'subscribed';
    sub.end(null, { type: 'unsubscribed', channel, code: 0, reason: 'unsubscribed by the application' });
    const session = this._connected;
    if (wasSubscribed && session) {
      try {
        await this._request(session, 'unsubscribe', { channel }, parse.ignore);
      } catch {
        // the connection went, and the subscription with it
      }
    }
  }

  subscription(channel) {
    return this._subs.get(channel) ?? null;
  }

  publish(channel, data, { idempotencyKey } = {}) {
    const params = { channel, data };
    if (idempotencyKey !== undefined) params.idempotency_key = idempotencyKey;
    return this._call('publish', params, parse.publish);
  }

  history(channel, { limit, since, reverse = false } = {}) {
    const params = { channel, reverse };
    if (limit !== undefined) params.limit = limit;
    if (since) params.since = { offset: since.offset, epoch: since.epoch };
    return this._call('history', params, (r) => parse.history(r, channel));
  }

  presence(channel) {
    return this._call('presence', { channel }, parse.presence);
  }

  presenceStats(channel) {
    return this._call('presence_stats', { channel }, parse.presenceStats);
  }

  async ping() {
    const started = now();
    await this._call('ping', {}, parse.ignore);
    return now() - started;
  }

  async _call(method, params, parser) {
    const deadline = now() + this.timeout;
    for (;;) {
      if (this.stopped) throw this.stopped;
      if (!this._running) throw new KizunaError('call connect() first');
      const session = this._connected;
      if (session) {
        try {
          return await this._request(session, method, params, parser, deadline - now());
        } catch (error) {
          if (!(error instanceof NotSent)) throw error;
          continue; // never left: wait for the next connection
        }
      }
      await this._waitConnected(deadline - now(), method);
    }
  }

  _waitConnected(ms, method) {
    return new Promise((resolve, reject) => {
      const waiter = () => {
        clearTimeout(timer);
        this._connectWaiters.delete(waiter);
        resolve();
      };
      const timer = setTimeout(() => {
        this._connectWaiters.delete(waiter);
        reject(new Timeout(`${method}: not connected within ${this.timeout} ms`));
      }, Math.max(0, ms));
      this._connectWaiters.add(waiter);
    });
  }

  _notifyConnectWaiters() {
    for (const waiter of [...this._connectWaiters]) waiter();
  }

  // --- the connection loop ---

  async _run() {
    let failures = 0;
    let authFailures = 0;
    let index = 0;
    let outcome = { code: CLOSE_ABNORMAL, reason: 'not connected', reconnect: true };
    try {
      while (!this._closing) {
        const url = this.endpoints[index % this.endpoints.length];
        this._setState({ state: 'connecting', url, attempt: failures });
        outcome = await this._attempt(url);
        if (this._closing) break;
        if (outcome.stable) failures = 0;
        if (!outcome.reconnect) break;
        authFailures = outcome.authFailed ? authFailures + 1 : 0;
        if (this.backoff.givesUp(failures + 1)) {
          outcome = { ...outcome, reconnect: false, reason: `${outcome.reason} (gave up after ${failures + 1} attempts)` };
          break;
        }
        // The server's advice (a draining node) replaces the backoff; a fresh token retries at once.
        const delay = outcome.delay != null ? outcome.delay : authFailures === 1 ? 0 : this.backoff.delay(failures, this._random);
        failures += 1;
        index += 1;
        this._setState({ state: 'disconnected', code: outcome.code, reason: outcome.reason, reconnect: true, delay, error: outcome.error ?? null });
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, delay);
          this._wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this._wake = null;
      }
    } catch (error) {
      console.error('kizuna: the connection loop failed', error);
      outcome = { code: CLOSE_ABNORMAL, reason: `client error: ${error}`, reconnect: false, error };
    }
    this._stop(this._closing ? { code: CLOSE_NORMAL, reason: 'client closed', reconnect: false } : outcome);
  }

  _stop(outcome) {
    const stopped = new Disconnected(outcome.code, outcome.reason);
    this.stopped = stopped;
    this._connected = null;
    this._setState({ state: 'disconnected', code: outcome.code, reason: outcome.reason, reconnect: false, delay: null, error: outcome.error ?? null });
    const error = outcome.code === CLOSE_NORMAL ? null : stopped;
    for (const sub of this._subs.values()) sub.end(error, null);
    if (this._rejectFirst) this._rejectFirst(stopped);
    this._notifyConnectWaiters();
  }

  async _attempt(url) {
    let token;
    try {
      token = await this._tokenForConnect();
    } catch (error) {
      if (error instanceof TokenRefused) return { code: UNAUTHORIZED, reason: error.message, reconnect: false };
      return { code: TOKEN_EXPIRED, reason: `token callback failed: ${error}`, reconnect: true, error };
    }
    let transport = null;
    let failure = null;
    const refused = [];
    for (const name of [...this._transportOrder]) {
      const factory = TRANSPORTS[name];
      const candidate = factory ? factory(url, this.options) : null;
      if (!candidate) continue; // unusable here (or an empty slot in the registry)
      try {
        await candidate.open(this.openTimeout);
        transport = candidate;
        break;
      } catch (error) {
        failure = error;
        refused.push([name, error]);
        if (this._closing) break;
      }
    }
    if (!transport) {
      const why = failure ? failure.message : 'no transport available';
      return { code: CLOSE_ABNORMAL, reason: `cannot connect to ${url}: ${why}`, reconnect: true, error: failure };
    }
    // Refused where a later transport opened: something on the way blocks them, not the server.
    for (const [name, error] of refused) this._transportFailed(name, error.message);
    if (this._closing) {
      transport.close(CLOSE_NORMAL, 'client closed');
      return { code: CLOSE_NORMAL, reason: 'client closed', reconnect: false };
    }
    this.transport = transport.name;
    const session = new Session(transport, url);
    this._session = session;
    transport.onmessage = (frame) => this._onFrame(session, frame);
    transport.onclose = (info) => this._onClose(session, info);
    try {
      const outcome = await this._serve(session, token);
      const broken = session.closeInfo?.broken || (session.clientId === null && outcome.reconnect && !outcome.authFailed);
      if (broken && !this._closing) this._transportFailed(transport.name, outcome.reason);
      return outcome;
    } finally {
      this._session = null;
      this._connected = null;
      this.clientId = null;
      for (const timer of session.timers) clearTimeout(timer);
      for (const sub of this._subs.values()) sub.onConnectionLost();
    }
  }

  async _serve(session, token) {
    const params = {};
    if (token) params.token = token;
    if (this.options.name) params.name = this.options.name;
    let result;
    try {
      result = await this._request(session, 'connect', params, parse.connect);
    } catch (error) {
      if (error instanceof ServerRejected) {
        const code = AUTH_ERRORS[error.code];
        session.localClose = code
          ? this._authFailed(code, `connect: ${error.message}`, token)
          : { code: SERVER_ERROR, reason: `connect: ${error.message}`, reconnect: true, error };
        session.transport.close(CLOSE_NORMAL, 'connect rejected');
      } else if (error instanceof Timeout) {
        session.localClose ??= { code: CLOSE_ABNORMAL, reason: `no answer to connect within ${this.timeout} ms`, reconnect: true, error };
        session.transport.close(CLOSE_ABNORMAL, 'connect timed out');
      }
      return this._sessionEnd(session);
    }
    session.clientId = this.clientId = result.client;
    session.connectedAt = now();
    this._transportFailures.delete(session.transport.name);
    this._setState({ state: 'connected', url: session.url, clientId: result.client, transport: session.transport.name });
    if (this._resolveFirst) this._resolveFirst();
    if (result.ttl !== null && this._getToken) this._scheduleRefresh(session, result.ttl * 1000 * this.refreshRatio, 0);
    session.pingInterval = this.pingInterval ?? (result.ping ? result.ping * 1000 : 25000);
    this._armHeartbeat(session);
    for (const sub of this._subs.values()) {
      if (sub.state === 'subscribing') this._sendSubscribe(session, sub);
    }
    if (!session.closed) {
      this._connected = session;
      this._notifyConnectWaiters();
    }
    const outcome = await this._sessionEnd(session);
    outcome.stable = now() - session.connectedAt >= this.stableAfter;
    return outcome;
  }

  async _sessionEnd(session) {
    const info = await session.ended;
    if (session.localClose) return session.localClose;
    return this._classify(info.code, info.reason || `closed by the server (${info.code})`, true);
  }

  /** One more failure of transport `name` where it should have worked; at fallbackAfter, it goes last. */
  _transportFailed(name, why) {
    const failures = (this._transportFailures.get(name) ?? 0) + 1;
    if (failures < this.fallbackAfter || this._transportOrder.at(-1) === name) {
      this._transportFailures.set(name, failures);
      return;
    }
    this._transportFailures.delete(name);
    this._transportOrder = [...this._transportOrder.filter((n) => n !== name), name];
    console.info(`kizuna: ${name} failed ${failures} times here (${why}); trying it last from now on`);
  }

  _classify(code, reason, reconnect) {
    if (code === UNAUTHORIZED || code === TOKEN_EXPIRED) return this._authFailed(code, reason, this._token);
    return { code, reason, reconnect: reconnect && reconnectAllowed(code) };
  }

  _authFailed(code, reason, token) {
    if (!this._getToken) return { code, reason, reconnect: false };
    this._rejected = token;
    this._token = null;
    return { code, reason, reconnect: true, authFailed: true };
  }

  async _tokenForConnect() {
    if (this._token === null && this._getToken) {
      const token = await this._getToken();
      if (!token) throw new TokenRefused('the token callback returned no token');
      if (token === this._rejected) throw new TokenRefused('the token callback returned the token just refused');
      this._token = token;
    }
    return this._token;
  }

  _scheduleRefresh(session, ms, failures) {
    session.later(ms, async () => {
      let token;
      let ttl;
      try {
        token = await this._getToken();
        if (!token || token === this._token) {
          // Nothing new to offer: let it expire; the server closes with 3006 and the
          // reconnect asks the callback again (and stops if it still has nothing).
          console.warn('kizuna: the token callback had no new token; the connection will expire');
          return;
        }
        ttl = await this._request(session, 'refresh', { token }, parse.refresh);
      } catch (error) {
        if (session.closed) return;
        console.warn('kizuna: token refresh failed', error);
        this._scheduleRefresh(session, this.backoff.delay(failures, this._random), failures + 1);
        return;
      }
      this._token = token;
      if (ttl !== null) this._scheduleRefresh(session, ttl * 1000 * this.refreshRatio, 0);
    });
  }

  // Browsers hide WebSocket ping frames, so a stalled connection is found by pinging with
  // a command after `pingInterval` ms of silence, and giving up after `pingTimeout`.
  _armHeartbeat(session) {
    if (!session.pingInterval || session.closed) return;
    if (session.heartbeat) session.cancel(session.heartbeat);
    if (session.deadline) session.cancel(session.deadline);
    session.deadline = null;
    session.heartbeat = session.later(session.pingInterval, () => {
      session.heartbeat = null;
      session.deadline = session.later(this.pingTimeout, () => {
        session.localClose = { code: CLOSE_PING_TIMEOUT, reason: 'ping timeout', reconnect: true };
        session.transport.close(CLOSE_PING_TIMEOUT, 'ping timeout');
      });
      try {
        this._send(session, 'ping', {}, parse.ignore).catch(() => {});
      } catch {
        // NotSent: the session is ending anyway
      }
    });
  }

  // --- reading ---

  _onFrame(session, frame) {
    if (session.closed) return;
    this._armHeartbeat(session);
    try {
      this._handleFrame(session, frame);
    } catch (error) {
      if (!(error instanceof MalformedFrame)) throw error;
      console.warn('kizuna: malformed frame from the server:', error.message);
      session.localClose = { code: CLOSE_PROTOCOL_ERROR, reason: `malformed frame from the server: ${error.message}`, reconnect: true, error };
      session.transport.close(CLOSE_PROTOCOL_ERROR, 'malformed frame');
      return;
    }
    if (session.localClose) session.transport.close(CLOSE_NORMAL, ''); // a disconnect push
  }

  _handleFrame(session, frame) {
    for (const message of decodeServerFrame(frame)) {
      switch (message.type) {
        case 'reply': {
          const pending = session.pending.get(message.id);
          if (!pending) break;
          session.pending.delete(message.id);
          let value;
          try {
            value = pending.onResult(message.result);
          } catch (error) {
            pending.reject(error);
            throw error;
          }
          pending.resolve(value);
          break;
        }
        case 'error': {
          const pending = session.pending.get(message.id);
          if (!pending) break;
          session.pending.delete(message.id);
          if (pending.onError) pending.onError(message);
          pending.reject(new ServerRejected(message.code, message.message));
          break;
        }
        case 'publication': {
          const sub = this._subs.get(message.channel);
          if (sub && sub.state === 'subscribed' && !sub.onPublication(message)) {
            this._resync(session, sub, `hole after offset ${sub.position?.offset}`);
          }
          break;
        }
        case 'join':
        case 'leave': {
          const sub = this._subs.get(message.channel);
          if (sub && sub.state === 'subscribed') sub.onJoinLeave(message);
          break;
        }
        case 'unsubscribed': {
          const sub = this._subs.get(message.channel);
          if (!sub) break;
          if (message.code >= 3000 && message.code <= 3999) {
            // protocol.md §5: subscribe again from the position (recovers, or reports the gap)
            if (sub.state === 'subscribed') this._resync(session, sub, `${message.code} ${message.reason}`);
            break;
          }
          this._subs.delete(message.channel);
          sub.end(null, message);
          break;
        }
        case 'disconnect':
          session.localClose = { ...this._classify(message.code, message.reason, message.reconnect), delay: message.delay };
          return;
        default:
          break;
      }
    }
  }

  _onClose(session, info) {
    if (session.closed) return;
    session.closed = true;
    session.closeInfo = info;
    if (this._connected === session) this._connected = null;
    for (const pending of session.pending.values()) pending.reject(new ConnectionLost('the connection dropped'));
    session.pending.clear();
    session._resolveEnded(info);
  }

  // --- writing ---

  _send(session, method, params, onResult, onError = null) {
    const id = ++this._nextId;
    const text = JSON.stringify({ id, method, params });
    session.transport.send(text); // throws NotSent on a closed connection
    return new Promise((resolve, reject) => {
      session.pending.set(id, { resolve, reject, onResult, onError });
    });
  }

  async _request(session, method, params, onResult, ms = this.timeout) {
    if (session.closed) throw new NotSent('the connection is closed');
    const reply = this._send(session, method, params, onResult);
    return withTimeout(reply, ms, `no answer to ${method} within ${this.timeout} ms`);
  }

  /** `sub`'s stream cannot be trusted (a hole, a gap): subscribe again from its position. */
  _resync(session, sub, why) {
    console.info(`kizuna: ${sub.channel}: ${why}: subscribing again`);
    sub.onConnectionLost(); // back to 'subscribing': pushes are ignored until the reply
    try {
      this._send(session, 'unsubscribe', { channel: sub.channel }, parse.ignore).catch(() => {});
    } catch {
      return; // NotSent: the next session subscribes it
    }
    this._sendSubscribe(session, sub);
  }

  _sendSubscribe(session, sub) {
    if (sub.sentIn === session || session.closed) return;
    sub.sentIn = session;
    const channel = sub.channel;
    const onResult = (result) => {
      if (this._subs.get(channel) === sub) sub.onSubscribed(parse.subscribe(result, channel));
    };
    const onError = (error) => {
      if (this._subs.get(channel) !== sub) return;
      if (TRANSIENT_ERRORS.has(error.code)) {
        sub.sentIn = null;
        const delay = this.backoff.delay(sub.retries, this._random);
        sub.retries += 1;
        session.later(delay, () => {
          if (this._session === session && this._subs.get(channel) === sub) this._sendSubscribe(session, sub);
        });
        return;
      }
      this._subs.delete(channel);
      if (sub.everSubscribed) sub.end(null, { type: 'unsubscribed', channel, code: error.code, reason: error.message });
      else sub.onRejected(new ServerRejected(error.code, error.message));
    };
    try {
      this._send(session, 'subscribe', sub.subscribeParams(), onResult, onError).catch(() => {});
    } catch {
      // NotSent: the next session subscribes it
    }
  }

  _setState(change) {
    this.state = change.state;
    this._emit('state', change);
  }
}

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Timeout(message)), Math.max(0, ms));
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
