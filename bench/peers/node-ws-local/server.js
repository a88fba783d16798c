// The guide's Node.js chat server (section 5, the seed-node peer) with the Redis hop taken out:
// a 'message' is fanned out in-process to the channel's clients. Same wire protocol
// ({type: 'subscribe' | 'message'} in; {user, content, timestamp} out), so the difference
// between this peer and seed-node is what Redis Pub/Sub costs.
'use strict';

const WebSocket = require('ws');

const wss = new WebSocket.Server({ port: Number(process.env.BENCH_PORT), host: '127.0.0.1' });

const channels = new Map();

function deliver(channel, message) {
  const clients = channels.get(channel);
  if (clients) {
    clients.forEach((ws) => {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(message);
      }
    });
  }
}

wss.on('connection', (ws) => {
  ws.on('message', (raw) => {
    const data = JSON.parse(raw);

    switch (data.type) {
      case 'subscribe':
        if (!channels.has(data.channel)) {
          channels.set(data.channel, new Set());
        }
        channels.get(data.channel).add(ws);
        break;

      case 'message':
        deliver(data.channel, JSON.stringify({
          user: data.user,
          content: data.content,
          timestamp: Date.now()
        }));
        break;
    }
  });

  ws.on('close', () => {
    channels.forEach((clients, channel) => {
      clients.delete(ws);
      if (clients.size === 0) {
        channels.delete(channel);
      }
    });
  });
});
