// A run's Server-Sent Events read with fetch(), not EventSource: EventSource
// cannot send the Authorization header, and a token must never be put in the
// URL. Reconnects after a dropped connection with `Last-Event-ID`, so every event
// arrives once, in order, until the stream's `end` event.

import { token } from './api.js';

const MAX_BACKOFF_MS = 5000;
/** Give up after this long without a successful connection. */
const GIVE_UP_MS = 120000;

/**
 * Follows `path` until its `end` event or until `signal` aborts.
 * `onEvent({id, event, data})` gets each event with `data` parsed as JSON;
 * `onState(text)` hears about reconnects. Resolves with the `end` event's data,
 * or null when aborted or given up.
 */
export async function follow(path, { onEvent, onState = () => {}, signal }) {
  let last = null;
  let backoff = 250;
  let failingSince = null;
  while (!signal.aborted) {
    try {
      const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${token()}` };
      if (last !== null) headers['Last-Event-ID'] = last;
      const resp = await fetch(path, { headers, signal, cache: 'no-store', credentials: 'omit' });
      if (resp.status === 401 || resp.status === 403 || resp.status === 404) {
        onState(`events: HTTP ${resp.status}`);
        return null;
      }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      failingSince = null;
      backoff = 250;
      onState('live');
      const end = await read(resp.body, signal, (e) => {
        if (e.id !== null) last = e.id;
        onEvent(e);
      });
      if (end) return end;
      // The stream closed without `end` (a proxy, a restart): resume.
      onState('reconnecting');
    } catch (err) {
      if (signal.aborted) return null;
      failingSince ??= Date.now();
      if (Date.now() - failingSince > GIVE_UP_MS) {
        onState('disconnected: reload the page to try again');
        return null;
      }
      onState(`reconnecting (${err.message || err})`);
    }
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
  return null;
}

/** Parses one text/event-stream body; answers the `end` event's data, if seen. */
async function read(body, signal, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { id: null, event: 'message', data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return null;
      buf += value;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (ev.data.length) {
            let data = ev.data.join('\n');
            try { data = JSON.parse(data); } catch { /* keep the text */ }
            const e = { id: ev.id, event: ev.event, data };
            if (e.event === 'end') return data;
            dispatch(e);
          }
          ev = { id: null, event: 'message', data: [] };
          continue;
        }
        if (line.startsWith(':')) continue; // keep-alive comment
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'id') ev.id = val;
        else if (field === 'event') ev.event = val;
        else if (field === 'data') ev.data.push(val);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}
