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
// commands with ids, replies, pushes) through a Transport. WebSocket carries it as is.
// When WebSocket cannot open, the client tries the next transport in `transports`
// (default ['websocket', 'sse', 'longpoll']) within the same attempt. The SSE and
// long-poll transports are FALLBACK HOOKS, not implemented yet: see TRANSPORTS below
// for the contract they must meet.

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

// The registry the Client picks transports from, in the order of its `transports` option.
//
// FALLBACK HOOKS — `sse` and `longpoll` are not implemented yet. Each must be a factory
// returning a Transport (contract above) that lets the Client keep speaking the command
// protocol while the wire is HTTP:
//
//   sse:      open an EventSource on /connection/sse (the server's format: see
//             src/kizuna/transports/sse.py); turn `connect` into the token it carries,
//             `subscribe`/`unsubscribe` into reopening the stream with the new channel set
//             and each channel's position (cursor / Last-Event-ID), `publish` into
//             POST /connection/publish; answer each command id with a reply frame, and
//             feed each event to onmessage as the push frame WebSocket would carry
//             (a `gap` event becomes a subscribe reply with recovered:false).
//   longpoll: the same over GET /connection/poll (`timeout=0` is plain polling).
//
// Commands a fallback cannot carry (history, presence) are answered with error 108
// (not available). Until a hook is filled in, the Client skips it.
export const TRANSPORTS = {
  websocket: (endpoint, options) =>
    typeof WebSocket === 'undefined' ? null : new WebSocketTransport(endpoint, options),
  sse: null, // FALLBACK HOOK: SSE + HTTP publish
  longpoll: null, // FALLBACK HOOK: long-polling
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
 * websocketPath, random (a () => [0, 1) function, for tests).
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
    for (const name of this.transportNames) {
      const factory = TRANSPORTS[name];
      const candidate = factory ? factory(url, this.options) : null;
      if (!candidate) continue; // not implemented yet, or unusable here
      try {
        await candidate.open(this.openTimeout);
        transport = candidate;
        break;
      } catch (error) {
        failure = error;
      }
    }
    if (!transport) {
      const why = failure ? failure.message : 'no transport available';
      return { code: CLOSE_ABNORMAL, reason: `cannot connect to ${url}: ${why}`, reconnect: true, error: failure };
    }
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
      return await this._serve(session, token);
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
          if (sub && sub.state === 'subscribed' && !sub.onPublication(message)) this._resync(session, sub);
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
          if (sub) {
            this._subs.delete(message.channel);
            sub.end(null, message);
          }
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

  /** A hole in `sub`'s stream: subscribe again from its position (recover, or gap). */
  _resync(session, sub) {
    console.info(`kizuna: hole in ${sub.channel} after offset ${sub.position?.offset}: subscribing again`);
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
