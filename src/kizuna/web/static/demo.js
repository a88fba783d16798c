// The demo chat at `/`: a small application of kizuna.js.
//
// - The token comes from `?token=` (the URL `kizuna serve` prints) or is pasted.
// - `?nodes=http://a:8001,http://b:8002` connects to several nodes (each retry tries the
//   next); the default is the node that served this page.
// - Joining reads the room's recent history first, then subscribes *from the position the
//   history ended at*, so nothing published in between is lost or shown twice.
// - After a reconnect the subscription either recovered what was missed (shown as
//   "recovered N") or reports a gap (shown as "gap"; the history is reloaded).
// - The header names the transport in use: WebSocket, or a fallback (SSE, long-polling)
//   when WebSocket cannot get through. Over a fallback there is no presence query: the
//   list shows who joined since (SSE), or says it is unavailable (long-polling).
// - Every string that came from a user (names, rooms, messages, user ids) reaches the page
//   through textContent, never as markup.

import { Client } from './kizuna.js';

const HISTORY = 50;
const TRANSPORTS = { websocket: 'WebSocket', sse: 'SSE (fallback)', longpoll: 'long-polling (fallback)' };
const SHORT = { sse: 'SSE', longpoll: 'long-polling' };
const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  transport: $('transport'),
  recovery: $('recovery'),
  roomTitle: $('room-title'),
  join: $('join'),
  name: $('name'),
  room: $('room'),
  token: $('token'),
  joinButton: $('join-button'),
  leaveButton: $('leave-button'),
  joinError: $('join-error'),
  chat: $('chat'),
  messages: $('messages'),
  composer: $('composer'),
  text: $('text'),
  presence: $('presence'),
  presenceCount: $('presence-count'),
};

const params = new URLSearchParams(location.search);
ui.token.value = params.get('token') ?? '';
ui.name.value = params.get('name') ?? '';
if (params.get('room')) ui.room.value = params.get('room');
const endpoints = (params.get('nodes') ?? '').split(',').map((s) => s.trim()).filter(Boolean);

let session = null; // the room we are in: {client, channel, name, sub, ...}

// --- rendering (textContent only) --------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(state, text, title = '') {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  ui.status.title = title;
}

function setTransport(name) {
  ui.transport.hidden = !name;
  ui.transport.dataset.transport = name ?? '';
  ui.transport.dataset.fallback = String(Boolean(name) && name !== 'websocket');
  ui.transport.textContent = name ? `via ${TRANSPORTS[name] ?? name}` : '';
}

function setRecovery(kind, text) {
  ui.recovery.hidden = !kind;
  ui.recovery.dataset.recovery = kind ?? '';
  ui.recovery.textContent = text ?? '';
}

function scrollDown() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function clock(at) {
  const when = Number.isFinite(at) ? new Date(at) : new Date();
  return when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** Show one publication. Anyone can publish anything: check the shape, fall back to JSON. */
function renderPublication(s, pub) {
  const key = `${pub.epoch}:${pub.offset}`;
  if (pub.offset && s.seen.has(key)) return;
  if (pub.offset) s.seen.add(key);
  const data = pub.data;
  const valid = data && typeof data === 'object' && typeof data.name === 'string';
  if (valid && pub.info) s.names.set(pub.info.client, data.name);
  let li;
  if (valid && data.kind === 'hello') {
    li = el('li', 'event', `${data.name} joined`);
  } else if (valid && data.kind === 'msg' && typeof data.text === 'string') {
    li = el('li', 'message');
    li.append(el('span', 'time', clock(data.at)), el('span', 'name', data.name), el('span', 'text', data.text));
  } else {
    li = el('li', 'message');
    li.append(el('span', 'name', pub.info ? pub.info.user : '?'), el('span', 'text', JSON.stringify(data)));
  }
  li.dataset.offset = String(pub.offset);
  ui.messages.append(li);
  scrollDown();
  renderPresence(s);
}

function renderPresence(s) {
  ui.presence.replaceChildren();
  const entries = [...s.present.values()].sort((a, b) => displayName(s, a).localeCompare(displayName(s, b)));
  for (const info of entries) {
    const li = el('li', null, displayName(s, info));
    li.append(el('span', 'user', `(${info.user})`));
    li.dataset.client = info.client;
    ui.presence.append(li);
  }
  ui.presenceCount.textContent = s.presenceNote || `(${entries.length})`;
}

function displayName(s, info) {
  return s.names.get(info.client) ?? info.user;
}

// --- the room -----------------------------------------------------------------------------

async function join(name, room, token) {
  const channel = `chat:${room}`;
  const client = new Client(endpoints.length ? endpoints : [location.origin], {
    token,
    // There is no token service here: offer whatever is in the token field. A token the
    // server refused is never retried as is, so an expired one ends in "disconnected"
    // until a new one is pasted and Join is pressed again.
    getToken: async () => ui.token.value.trim() || null,
  });
  const s = { client, channel, name, sub: null, seen: new Set(), names: new Map(), present: new Map(), presenceNote: '', reloading: null, countdown: null };
  session = s;
  client.on('state', (change) => onState(s, change));
  ui.messages.replaceChildren();
  ui.roomTitle.textContent = `# ${room}`;
  setRecovery(null);

  await client.connect();
  // 1. Recent history, newest first on the wire, shown oldest first.
  let since = null;
  try {
    const page = await client.history(channel, { limit: HISTORY, reverse: true });
    for (const pub of page.publications.reverse()) renderPublication(s, pub);
    since = page.position;
  } catch (error) {
    console.warn('no history for this room', error);
  }
  // 2. Subscribe from where the history ended: what was published meanwhile is replayed.
  s.sub = await client.subscribe(channel, { since, handler: (event) => onEvent(s, event) });
  await client.publish(channel, { kind: 'hello', name });
}

async function onEvent(s, event) {
  if (session !== s) return;
  switch (event.type) {
    case 'publication':
      if (s.reloading) s.reloading.push(event);
      else renderPublication(s, event);
      break;
    case 'subscribed':
      if (event.resubscribed) {
        if (event.gap) {
          setRecovery('gap', 'gap: some messages could not be recovered — history reloaded');
          ui.messages.append(el('li', 'divider', 'messages may be missing here (gap) — reloaded from history'));
          await reloadHistory(s);
        } else {
          const n = event.missed;
          setRecovery('recovered', `recovered ${n} missed message${n === 1 ? '' : 's'}`);
        }
      }
      await refreshPresence(s);
      break;
    case 'join':
      s.present.set(event.info.client, event.info);
      renderPresence(s);
      break;
    case 'leave':
      s.present.delete(event.info.client);
      renderPresence(s);
      break;
    case 'unsubscribed':
      if (event.code) setStatus('disconnected', `left the room: ${event.code} ${event.reason}`);
      break;
    default:
      break;
  }
}

/** After a gap: show what the history still holds that is not on screen, then what came live. */
async function reloadHistory(s) {
  s.reloading = [];
  try {
    const page = await s.client.history(s.channel, { limit: HISTORY, reverse: true });
    for (const pub of page.publications.reverse()) renderPublication(s, pub);
  } catch (error) {
    console.warn('could not reload history', error);
  } finally {
    const live = s.reloading;
    s.reloading = null;
    for (const pub of live) renderPublication(s, pub);
  }
}

async function refreshPresence(s) {
  try {
    const clients = await s.client.presence(s.channel);
    s.present = new Map(Object.entries(clients));
    s.presenceNote = '';
    renderPresence(s);
  } catch (error) {
    if (error.code !== 108) console.warn('presence unavailable', error);
    // 108 over a fallback: nobody can say who is here; list who joins from now on.
    if (error.code === 108) s.present = new Map();
    s.presenceNote = error.code === 108 ? `(not over ${SHORT[s.client.transport] ?? s.client.transport})` : '';
    renderPresence(s);
  }
}

function onState(s, change) {
  if (session !== s) return;
  clearInterval(s.countdown);
  if (change.state === 'connecting') {
    setStatus('connecting', change.attempt ? `connecting… (attempt ${change.attempt + 1})` : 'connecting…');
  } else if (change.state === 'connected') {
    setStatus('connected', 'connected', `${change.url} via ${change.transport}`);
    setTransport(change.transport);
  } else if (change.reconnect) {
    const until = performance.now() + change.delay;
    const why = `${change.code} ${change.reason}`;
    const tick = () => {
      const left = Math.max(0, until - performance.now()) / 1000;
      setStatus('reconnecting', `reconnecting in ${left.toFixed(1)} s`, why);
    };
    tick();
    s.countdown = setInterval(tick, 100);
  } else {
    setStatus('disconnected', `disconnected: ${change.code} ${change.reason}`);
  }
}

async function leave() {
  const s = session;
  session = null;
  if (!s) return;
  clearInterval(s.countdown);
  await s.client.close();
  setStatus('idle', 'not connected');
  setTransport(null);
  setRecovery(null);
}

// --- forms --------------------------------------------------------------------------------

ui.join.addEventListener('submit', async (event) => {
  event.preventDefault();
  ui.joinError.hidden = true;
  const name = ui.name.value.trim();
  const room = ui.room.value.trim();
  const token = ui.token.value.trim();
  if (!name || !room) return;
  if (!token) {
    ui.joinError.textContent = 'A token is needed: open the URL `kizuna serve` printed, or paste one (kizuna token --sub NAME).';
    ui.joinError.hidden = false;
    return;
  }
  await leave();
  ui.chat.hidden = false;
  ui.leaveButton.hidden = false;
  try {
    await join(name, room, token);
    ui.text.focus();
  } catch (error) {
    ui.joinError.textContent = `Could not join: ${error.message}`;
    ui.joinError.hidden = false;
  }
});

ui.leaveButton.addEventListener('click', async () => {
  await leave();
  ui.chat.hidden = true;
  ui.leaveButton.hidden = true;
  ui.roomTitle.textContent = '';
});

ui.composer.addEventListener('submit', async (event) => {
  event.preventDefault();
  const s = session;
  const text = ui.text.value;
  if (!s || !text.trim()) return;
  ui.text.value = '';
  try {
    await s.client.publish(s.channel, { kind: 'msg', name: s.name, text, at: Date.now() });
  } catch (error) {
    ui.text.value = text; // not sent (or not known to be): give it back
    ui.joinError.textContent = `Not sent: ${error.message}`;
    ui.joinError.hidden = false;
  }
});

// Let the URL fill in everything: /?token=…&name=ann&room=lobby joins at once.
if (params.get('token') && params.get('name')) ui.join.requestSubmit();
