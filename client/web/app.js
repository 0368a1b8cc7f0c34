// Live captioning page: microphone -> AudioWorklet (16 kHz Int16) -> WebSocket -> captions.
//
// Served by the service itself at /, with no build step and nothing from a CDN.
// Reconnects on a dropped connection with backoff. Audio is kept from the end of the last final
// (bounded to REPLAY_S seconds) and re-sent to the new session, so words spoken across a drop
// are not lost; if more than that had to be kept, the page says how much was lost.

const SAMPLE_RATE = 16000;
const CHUNK_SAMPLES = 1600; // 100 ms per WebSocket frame
const REPLAY_S = 30; // audio kept for replay after a reconnect
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
const MAX_BUFFERED_BYTES = 4 << 20; // more unsent bytes than this: the connection is stalled
const STOP_TIMEOUT_MS = 15000;

const $ = (id) => document.getElementById(id);
const ui = {
  state: $('state'), lag: $('lag'), model: $('model'), start: $('start'), form: $('controls'),
  language: $('language'), context: $('context'), notice: $('notice'), finals: $('finals'),
  committed: document.querySelector('#live .committed'),
  tentative: document.querySelector('#live .tentative'), captions: $('captions'),
};

// Captured audio by absolute sample position (since Start), bounded to `seconds`.
class AudioHistory {
  constructor(seconds) {
    this.capacity = seconds * SAMPLE_RATE;
    this.chunks = []; // [{start, pcm}]
    this.end = 0;
  }
  get start() { return this.chunks.length ? this.chunks[0].start : this.end; }
  push(pcm) {
    this.chunks.push({ start: this.end, pcm });
    this.end += pcm.length;
    while (this.end - this.start > this.capacity) this.chunks.shift();
  }
  since(position) {
    return this.chunks
      .filter((c) => c.start + c.pcm.length > position)
      .map((c) => (c.start >= position ? c.pcm : c.pcm.subarray(position - c.start)));
  }
  dropBefore(position) {
    while (this.chunks.length && this.chunks[0].start + this.chunks[0].pcm.length <= position) {
      this.chunks.shift();
    }
  }
}

const app = {
  state: 'idle', // idle | connecting | live | reconnecting | stopping | error
  ws: null,
  audio: null, // {ctx, node, stream}
  history: new AudioHistory(REPLAY_S),
  sessionStart: 0, // history position where the current session's audio began
  finalEnd: 0, // history position up to which everything is finalized
  ready: false, // session.created received on the current socket
  attempt: 0,
  everConnected: false,
  lastError: null,
  retryTimer: null,
  stopWaiter: null,
};
window.captionsApp = app; // for debugging and tests

function setState(state) {
  app.state = state;
  ui.state.dataset.state = state;
  ui.state.textContent = state;
  const active = state !== 'idle' && state !== 'error';
  ui.start.textContent = active ? 'Stop' : 'Start';
  ui.start.classList.toggle('stop', active);
}

function notify(text, kind = 'error') {
  ui.notice.hidden = !text;
  ui.notice.textContent = text || '';
  ui.notice.className = kind;
}

function serverBase() {
  const override = new URLSearchParams(location.search).get('server');
  if (override) return override.replace(/\/+$/, '');
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host;
}

function streamUrl() {
  const params = new URLSearchParams({
    sample_rate: String(SAMPLE_RATE), encoding: 'pcm_s16le', language: ui.language.value || 'auto',
  });
  if (ui.context.value.trim()) params.set('context', ui.context.value.trim());
  const token = new URLSearchParams(location.search).get('token');
  if (token) params.set('token', token);
  return `${serverBase()}/v1/stream?${params}`;
}

// ---------------------------------------------------------------- microphone

async function openMicrophone() {
  if (!window.isSecureContext || !navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error('This page needs a secure connection to use the microphone: open it over ' +
      'https:// (start the server with --certfile/--keyfile) or on localhost.');
  }
  const ctx = new AudioContext();
  // the worklet is loaded before getUserMedia so no audio is lost while it loads
  await ctx.audioWorklet.addModule('capture-worklet.js');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false,
               channelCount: 1 },
    });
  } catch (error) {
    await ctx.close();
    throw new Error(describeMicrophoneError(error));
  }
  const node = new AudioWorkletNode(ctx, 'capture', {
    channelCount: 1, channelCountMode: 'explicit',
    processorOptions: { chunkSamples: CHUNK_SAMPLES },
  });
  node.port.onmessage = ({ data }) => {
    if (data.pcm) onAudio(data.pcm);
    if (data.flushed && app.audio && app.audio.onFlushed) app.audio.onFlushed();
  };
  ctx.createMediaStreamSource(stream).connect(node);
  node.connect(ctx.destination); // the node outputs silence; connecting keeps it running
  if (ctx.state !== 'running') await ctx.resume();
  return { ctx, node, stream, onFlushed: null };
}

function describeMicrophoneError(error) {
  switch (error && error.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was blocked. Allow the microphone for this site (the icon in ' +
        'the address bar), then press Start again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Connect one and press Start again.';
    case 'NotReadableError':
      return 'The microphone is in use by another application or could not be opened.';
    default:
      return `The microphone could not be opened: ${error && error.message}`;
  }
}

async function closeMicrophone() {
  const audio = app.audio;
  if (!audio) return;
  audio.stream.getTracks().forEach((t) => t.stop());
  await new Promise((resolve) => { // let the worklet hand over its last partial chunk
    audio.onFlushed = resolve;
    audio.node.port.postMessage('flush');
    setTimeout(resolve, 300);
  });
  audio.node.port.postMessage('stop');
  await audio.ctx.close();
  app.audio = null;
}

function onAudio(pcm) {
  app.history.push(pcm);
  if (app.ready && app.ws && app.ws.readyState === WebSocket.OPEN) send(pcm);
}

function send(pcm) {
  if (app.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    app.ws.close(4000, 'stalled'); // reconnect and replay instead of piling up in memory
    return;
  }
  app.ws.send(pcm);
}

// ---------------------------------------------------------------- connection

function connect() {
  clearTimeout(app.retryTimer);
  app.ready = false;
  const url = streamUrl();
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (error) {
    fail(`The server address is not valid (${url}): ${error.message}`);
    return;
  }
  ws.binaryType = 'arraybuffer';
  app.ws = ws;
  ws.onmessage = (message) => {
    if (ws === app.ws && typeof message.data === 'string') onEvent(JSON.parse(message.data));
  };
  ws.onclose = (event) => { if (ws === app.ws) onClose(event, url); };
}

function onEvent(event) {
  switch (event.type) {
    case 'session.created': {
      app.ready = true;
      app.everConnected = true;
      app.attempt = 0;
      app.lastError = null;
      ui.model.textContent = event.model;
      // replay what is not finalized yet: the tail of a dropped session plus the outage
      const from = Math.max(app.finalEnd, app.history.start);
      const lostSamples = from - app.finalEnd;
      app.sessionStart = from;
      for (const pcm of app.history.since(from)) send(pcm);
      if (app.state !== 'stopping') setState('live');
      notify(lostSamples > 0 ?
        `${(lostSamples / SAMPLE_RATE).toFixed(1)} s of audio could not be re-sent after the ` +
        'connection dropped.' : '', 'info');
      if (app.state === 'stopping') endInput();
      break;
    }
    case 'transcript.partial':
      ui.committed.textContent = event.committed;
      ui.tentative.textContent = event.tentative;
      scrollDown();
      break;
    case 'transcript.final':
      addFinal(event);
      break;
    case 'audio.ack':
      ui.lag.textContent = `lag ${(event.lag_ms / 1000).toFixed(1)} s`;
      break;
    case 'warning':
      if (event.code === 'lagging') notify(`The server is falling behind: ${event.message}`, 'info');
      break;
    case 'error':
      app.lastError = event;
      // non-fatal: the server rejected one setting or frame and goes on; say which
      if (event.fatal) notify(`The server ended the session: ${event.message}`);
      else notify(`The server rejected a request: ${event.message}`, 'info');
      break;
    case 'session.closed':
      if (app.stopWaiter) app.stopWaiter();
      break;
    default:
      break;
  }
}

function addFinal(event) {
  const absoluteMs = (app.sessionStart / SAMPLE_RATE) * 1000 + event.start_ms;
  app.finalEnd = Math.max(app.finalEnd, app.sessionStart + (event.end_ms * SAMPLE_RATE) / 1000);
  app.history.dropBefore(app.finalEnd);
  ui.committed.textContent = '';
  ui.tentative.textContent = '';
  if (!event.text) return;
  const item = document.createElement('li');
  const time = document.createElement('time');
  const seconds = Math.floor(absoluteMs / 1000);
  time.textContent = `${String(Math.floor(seconds / 60)).padStart(2, '0')}:` +
    `${String(seconds % 60).padStart(2, '0')}`;
  item.append(time, document.createTextNode(event.text));
  ui.finals.append(item);
  scrollDown();
}

function scrollDown() {
  ui.captions.scrollTop = ui.captions.scrollHeight;
}

function onClose(event, url) {
  app.ready = false;
  if (app.state === 'stopping' || app.state === 'idle') {
    if (app.stopWaiter) app.stopWaiter();
    return;
  }
  if (event.code === 4008) return fail('The server needs an access token: add ?token=… to this page’s address.');
  if (event.code === 4001) {
    return fail(`The server cannot serve these settings: ${app.lastError ? app.lastError.message : event.reason}`);
  }
  const delay = BACKOFF_MS[Math.min(app.attempt, BACKOFF_MS.length - 1)];
  app.attempt += 1;
  const seconds = (delay / 1000).toFixed(1);
  if (event.code === 1013) {
    notify(`The server is full. Retrying in ${seconds} s…`, 'info');
  } else if (!app.everConnected) {
    notify(`Cannot reach the captioning server at ${url.split('?')[0]}. Retrying in ${seconds} s…`);
  } else {
    notify(`Connection lost. Reconnecting in ${seconds} s…`, 'info');
  }
  setState('reconnecting');
  app.retryTimer = setTimeout(connect, delay);
}

function fail(message) {
  notify(message);
  setState('error');
  clearTimeout(app.retryTimer);
  closeMicrophone();
}

function endInput() {
  if (app.ws && app.ws.readyState === WebSocket.OPEN) {
    app.ws.send(JSON.stringify({ type: 'input.end' }));
  }
}

// ---------------------------------------------------------------- start / stop

async function start() {
  notify('');
  setState('connecting');
  app.history = new AudioHistory(REPLAY_S);
  app.sessionStart = app.finalEnd = 0;
  app.attempt = 0;
  app.everConnected = false;
  try {
    app.audio = await openMicrophone();
  } catch (error) {
    fail(error.message);
    return;
  }
  connect();
}

async function stop() {
  setState('stopping');
  clearTimeout(app.retryTimer);
  await closeMicrophone();
  if (app.ready) {
    await new Promise((resolve) => {
      app.stopWaiter = resolve;
      endInput();
      setTimeout(resolve, STOP_TIMEOUT_MS);
    });
  }
  app.stopWaiter = null;
  if (app.ws) app.ws.close();
  app.ws = null;
  setState('idle');
}

ui.form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (app.state === 'idle' || app.state === 'error') start();
  else if (app.state !== 'stopping') stop();
});

for (const field of [ui.language, ui.context]) {
  field.addEventListener('change', () => {
    if (app.ready && app.ws.readyState === WebSocket.OPEN) {
      app.ws.send(JSON.stringify({
        type: 'session.update', language: ui.language.value || 'auto', context: ui.context.value,
      }));
    }
  });
}

setState('idle');
