// The game-day dashboard: sign-in, runs, the live run page, schedules,
// experiments, agents, halt. Hash routes (#/runs/run_...) so the server serves
// one page; nothing secret ever goes into the URL.

import * as api from './api.js';
import { follow } from './sse.js';
import { Timeline } from './timeline.js';

const main = document.getElementById('main');
const flashBox = document.getElementById('flash');
let me = null; // {name, role}
let cleanup = () => {};

const RANK = { viewer: 0, operator: 1, admin: 2 };
const may = (role) => me && RANK[me.role] >= RANK[role];
const IN_FLIGHT = new Set(['queued', 'running']);

// === small DOM helpers ===

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function flash(text, bad = false) {
  flashBox.replaceChildren(h('p', { class: bad ? 'bad' : '' }, text));
}

function clearFlash() {
  flashBox.replaceChildren();
}

function badge(status) {
  return h('span', { class: `badge ${status}`, 'data-status': status }, status ?? '–');
}

function when(t) {
  if (!t) return '–';
  const d = new Date(t);
  return h('time', { datetime: t, title: d.toISOString() }, d.toLocaleString());
}

function seconds(a, b) {
  if (!a) return '–';
  const s = ((b ? new Date(b) : new Date()) - new Date(a)) / 1000;
  return s < 90 ? `${s.toFixed(0)} s` : `${(s / 60).toFixed(1)} min`;
}

function table(caption, head, rows, empty = 'None yet.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('table', {},
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows));
}

function page(title, ...content) {
  document.title = `${title} · faultline`;
  main.replaceChildren(h('h1', {}, title), ...content);
}

function errorText(err) {
  return String((err && err.message) || err);
}

/** Polls `f` every `ms` while the page is shown. */
function every(ms, f) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try { await f(); } catch (err) { if (!stopped) flash(errorText(err), true); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// === sign-in ===

function signIn(message) {
  me = null;
  cleanup();
  cleanup = () => {};
  showChrome(false);
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true, 'aria-describedby': 'token-help' });
  const err = h('p', { id: 'signin-error', class: 'bad', role: 'alert' }, message || '');
  const form = h('form', { class: 'stack card signin', 'aria-labelledby': 'signin-title', novalidate: true },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'API token'),
      input,
      h('span', { id: 'token-help', class: 'muted' }, 'A token from the controller\'s config. It stays in this tab only and is sent with each request.')),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Sign in')),
    err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    if (!t) { err.textContent = 'Enter a token.'; input.focus(); return; }
    try {
      me = await api.call('GET', '/v1/me', undefined, t);
    } catch (e) {
      err.textContent = e.status === 401 ? 'The controller does not know this token.' : errorText(e);
      input.select();
      return;
    }
    api.setToken(t);
    input.value = '';
    start();
  });
  document.title = 'Sign in · faultline';
  main.replaceChildren(form);
  input.focus();
}

function showChrome(on) {
  document.getElementById('nav').hidden = !on;
  document.getElementById('signout').hidden = !on;
  const who = document.getElementById('who');
  who.hidden = !on;
  who.textContent = on ? `${me.name} · ${me.role}` : '';
  document.getElementById('halt').hidden = !(on && may('admin'));
  if (!on) clearFlash();
}

api.whenUnauthorized(() => {
  api.clearToken();
  signIn('The controller no longer accepts this token; sign in again.');
});

// === halt ===

const dialog = document.getElementById('halt-dialog');
document.getElementById('halt').addEventListener('click', () => dialog.showModal());
document.getElementById('halt-cancel').addEventListener('click', () => dialog.close());
document.getElementById('halt-confirm').addEventListener('click', async () => {
  dialog.close();
  try {
    const out = await api.post('/v1/halt');
    const reverted = out.agents.reduce((n, a) => n + ((a.report && a.report.reverted.length) || 0), 0);
    const failed = out.agents.filter((a) => a.error || (a.report && a.report.failed.length));
    flash(`Halted: ${out.aborted.length} run(s) aborted, ${reverted} fault(s) reverted${failed.length ? `; NOT confirmed on ${failed.map((a) => a.agent).join(', ')}` : ''}.`, failed.length > 0);
  } catch (err) {
    flash(`Halt failed: ${errorText(err)}`, true);
  }
  route();
});
document.getElementById('signout').addEventListener('click', () => {
  api.clearToken();
  location.hash = '#/runs';
  signIn();
});

// === runs ===

function verdictText(run) {
  const v = run.summary && run.summary.verdicts;
  if (!Array.isArray(v) || !v.length) return IN_FLIGHT.has(run.status) ? 'pending' : (run.reason || '–');
  const failed = v.filter((x) => !x.holds);
  if (!failed.length) return h('span', { class: 'ok' }, `all ${v.length} held`);
  return h('span', { class: 'bad' }, `${failed.length} of ${v.length} failed: ${failed.map((x) => x.name || x.kind).join(', ')}`);
}

async function runsPage() {
  const list = h('div', { id: 'runs' });
  const content = [];
  if (may('operator')) content.push(await startForm());
  page('Runs', ...content, h('h2', {}, 'Recent runs'), list);
  return every(2000, async () => {
    const runs = await api.get('/v1/runs?limit=50');
    list.replaceChildren(table('Recent runs', ['Run', 'Experiment', 'Status', 'Verdict', 'Requested by', 'Started', 'Took'],
      runs.map((r) => h('tr', { 'data-run': r.id },
        h('td', {}, h('a', { href: `#/runs/${r.id}` }, r.id)),
        h('td', {}, r.experiment_name),
        h('td', {}, badge(r.status)),
        h('td', {}, verdictText(r)),
        h('td', {}, r.requested_by),
        h('td', {}, when(r.started_at || r.created_at)),
        h('td', { class: 'num' }, seconds(r.started_at, r.finished_at)))),
      'No runs yet. Start one from a stored experiment.'));
  });
}

async function startForm(selected) {
  const exps = await api.get('/v1/experiments?limit=200');
  const sel = h('select', { id: 'start-experiment', name: 'experiment' },
    exps.map((e) => h('option', { value: e.id, selected: e.id === selected }, `${e.name} (${e.id})`)));
  const form = h('form', { class: 'row card', 'aria-label': 'Start a run' },
    h('label', { for: 'start-experiment' }, 'Start a run of'),
    sel,
    h('button', { type: 'submit', id: 'start-run', disabled: !exps.length }, 'Start run'),
    exps.length ? null : h('span', { class: 'muted' }, 'Store an experiment first (Experiments).'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const run = await api.post('/v1/runs', { experiment_id: sel.value });
      location.hash = `#/runs/${run.id}`;
    } catch (err) {
      flash(`Cannot start the run: ${errorText(err)}`, true);
    }
  });
  return form;
}

// === the live run page ===

async function runPage(id) {
  const run = await api.get(`/v1/runs/${encodeURIComponent(id)}`);
  const ctl = new AbortController();
  const status = h('span', { id: 'run-status' }, badge(run.status));
  const phase = h('dd', { id: 'run-phase' }, '–');
  const elapsed = h('dd', { id: 'run-elapsed' }, '–');
  const latest = h('dd', { id: 'run-latest' }, '–');
  const stream = h('dd', { id: 'run-stream' }, 'connecting');
  const reason = h('p', { id: 'run-reason', class: 'muted' }, run.reason || '');
  const abort = may('operator')
    ? h('button', { type: 'button', id: 'abort', class: 'danger', hidden: !IN_FLIGHT.has(run.status) }, 'Abort run')
    : null;
  const chart = h('div', { class: 'timeline', id: 'timeline' });
  const faultsBox = h('div', { id: 'faults' });
  const verdictsBox = h('ul', { id: 'verdicts', class: 'plain', 'aria-live': 'polite' });
  const log = h('ol', { id: 'events', reversed: true });

  page(`Run of ${run.experiment_name}`,
    h('div', { class: 'row' }, status, h('code', {}, run.id), abort,
      h('span', { class: 'muted' }, `requested by ${run.requested_by}`)),
    reason,
    h('dl', { class: 'stats' },
      h('div', {}, h('dt', {}, 'Phase'), phase),
      h('div', {}, h('dt', {}, 'Run time'), elapsed),
      h('div', {}, h('dt', {}, 'Latest window'), latest),
      h('div', {}, h('dt', {}, 'Event stream'), stream)),
    h('div', { class: 'grid' },
      h('section', { 'aria-labelledby': 'tl-h' }, h('h2', { id: 'tl-h' }, 'Timeline'), chart),
      h('div', {},
        h('section', { 'aria-labelledby': 'faults-h' }, h('h2', { id: 'faults-h' }, 'Faults per agent'), faultsBox),
        h('section', { 'aria-labelledby': 'verdicts-h' }, h('h2', { id: 'verdicts-h' }, 'Verdicts'), verdictsBox))),
    h('details', {}, h('summary', {}, 'Event log'), log));

  const tl = new Timeline(chart, `Timeline of run ${run.id}: latency and availability per probe, fault windows shaded`);
  const faults = new Map(); // fault id -> {step, kind, agent, state, injected, reverted, detail, error}
  let current = run.status;
  // The run's second 0 on this browser's clock, estimated from when events arrive
  // (an event at at_s cannot arrive before epoch + at_s): while the run is in
  // flight the chart's right edge is now, so an active fault window grows.
  let epoch = null;
  const seen = (at) => {
    if (!Number.isFinite(at)) return;
    const e = performance.now() - at * 1000;
    epoch = epoch === null ? e : Math.min(epoch, e);
  };
  const clock = setInterval(() => {
    if (epoch === null || !IN_FLIGHT.has(current)) return;
    const now = (performance.now() - epoch) / 1000;
    tl.at(now);
    elapsed.textContent = `${fmt(now)} s`;
  }, 500);

  const setStatus = (s, why) => {
    current = s;
    status.replaceChildren(badge(s));
    if (abort) abort.hidden = !IN_FLIGHT.has(s);
    if (why !== undefined) reason.textContent = why || '';
  };

  const renderFaults = () => {
    const byAgent = new Map();
    for (const [fid, f] of faults) {
      if (!byAgent.has(f.agent)) byAgent.set(f.agent, []);
      byAgent.get(f.agent).push([fid, f]);
    }
    if (!byAgent.size) {
      faultsBox.replaceChildren(h('p', { class: 'muted' }, 'Nothing injected yet.'));
      return;
    }
    faultsBox.replaceChildren(...[...byAgent].map(([agent, list]) => {
      const active = list.filter(([, f]) => f.state === 'injected').length;
      return h('div', { class: 'agent', 'data-agent': agent },
        h('h3', {}, `${agent}: `, h('span', { class: active ? 'warn' : 'ok', 'data-active': active }, `${active} active`)),
        table(`Faults on ${agent}`, ['Step', 'Kind', 'State', 'Window (s)'], list.map(([fid, f]) => h('tr', { 'data-fault': fid, 'data-state': f.state },
          h('td', {}, f.step), h('td', {}, h('code', {}, f.kind)),
          h('td', {}, stateText(f)),
          h('td', { class: 'num' }, `${fmt(f.injected)} – ${f.reverted === null ? 'now' : fmt(f.reverted)}`)))));
    }));
  };

  const addVerdict = (v) => {
    const text = `${v.phase}: ${v.name || v.kind}${v.probe ? ` (${v.probe})` : ''} ${v.holds ? 'held' : 'FAILED'}${v.reason ? ` — ${v.reason}` : ''}`;
    verdictsBox.append(h('li', { class: v.holds ? 'ok' : 'bad', 'data-holds': String(v.holds) }, v.holds ? '✓ ' : '✗ ', text));
  };

  const logEvent = (e) => {
    log.prepend(h('li', { 'data-id': e.id ?? '' }, h('code', {}, `${e.id ?? ''} ${e.event}`), ' ', JSON.stringify(e.data)));
    while (log.childElementCount > 2000) log.lastElementChild.remove();
  };

  const onEvent = (e) => {
    const d = e.data || {};
    logEvent(e);
    seen(e.event === 'window' && d.point ? d.point.t_s : d.at_s);
    switch (e.event) {
      case 'phase':
        phase.textContent = d.phase;
        tl.phase(d.phase, d.at_s);
        if (current === 'queued') setStatus('running');
        break;
      case 'window': {
        const p = d.point || {};
        tl.point(d.probe, p);
        latest.textContent = `${d.probe}: ${fmt(p.availability)}% · p99 ${fmt(p.p99_ms)} ms`;
        break;
      }
      case 'injected':
        faults.set(d.fault, { step: d.step, kind: d.kind, agent: d.agent, state: 'injected', injected: d.at_s, reverted: null });
        tl.injected(d.step, d.fault, d.agent, d.at_s);
        renderFaults();
        break;
      case 'inject_failed': {
        const f = faults.get(d.fault) || { step: d.fault, kind: '?', agent: d.agent, injected: d.at_s, reverted: d.at_s };
        f.state = 'inject_failed';
        f.error = d.reason;
        faults.set(d.fault, f);
        renderFaults();
        break;
      }
      case 'observed': {
        const f = faults.get(d.fault);
        if (f && d.observation) f.detail = d.observation.detail;
        break;
      }
      case 'reverted': {
        const f = faults.get(d.fault) || { step: d.fault, kind: '?', agent: d.agent, injected: d.at_s };
        f.state = d.confirmed ? 'reverted' : 'revert_unconfirmed';
        f.reverted = d.at_s;
        f.error = d.error;
        faults.set(d.fault, f);
        tl.reverted(f.step, d.fault, d.at_s);
        renderFaults();
        break;
      }
      case 'verdict':
        addVerdict(d);
        break;
      case 'aborting':
        phase.textContent = 'aborting';
        reason.textContent = `Aborting: ${d.reason}`;
        tl.at(d.at_s);
        break;
      case 'finished':
        setStatus(d.status, d.reason);
        break;
      case 'aborted':
      case 'error':
        reason.textContent = d.reason || '';
        break;
      default:
        break;
    }
    if (Number.isFinite(d.at_s)) elapsed.textContent = `${fmt(d.at_s)} s`;
  };

  if (abort) {
    abort.addEventListener('click', async () => {
      abort.disabled = true;
      try {
        await api.post(`/v1/runs/${encodeURIComponent(id)}/abort`);
        flash('Abort requested: reverting every fault of this run.');
      } catch (err) {
        flash(`Cannot abort: ${errorText(err)}`, true);
      } finally {
        abort.disabled = false;
      }
    });
  }

  renderFaults();
  follow(`/v1/runs/${encodeURIComponent(id)}/events`, {
    signal: ctl.signal,
    onEvent,
    onState: (s) => { stream.textContent = s; },
  }).then((end) => {
    if (ctl.signal.aborted) return;
    if (end) {
      setStatus(end.status, end.reason);
      stream.textContent = 'ended';
      phase.textContent = phase.textContent === 'aborting' ? 'ended (aborted)' : `ended`;
    }
  });
  return () => { ctl.abort(); clearInterval(clock); };
}

function stateText(f) {
  switch (f.state) {
    case 'injected': return h('span', { class: 'warn' }, 'injected');
    case 'reverted': return h('span', { class: 'ok' }, 'reverted');
    case 'revert_unconfirmed': return h('span', { class: 'bad' }, `revert NOT confirmed${f.error ? `: ${f.error}` : ''}`);
    case 'inject_failed': return h('span', { class: 'bad' }, `inject failed${f.error ? `: ${f.error}` : ''}`);
    default: return f.state;
  }
}

function fmt(v) {
  return typeof v === 'number' && Number.isFinite(v) ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1)) : '–';
}

// === schedules ===

async function schedulesPage() {
  const list = h('div', { id: 'schedules' });
  const content = [h('h2', {}, 'Schedules'), list];
  if (may('admin')) content.push(h('h2', {}, 'New schedule'), await scheduleForm());
  page('Game-day schedules', ...content);
  const exps = new Map((await api.get('/v1/experiments?limit=1000')).map((e) => [e.id, e.name]));
  return every(5000, async () => {
    const items = await api.get('/v1/schedules');
    list.replaceChildren(table('Schedules', ['Name', 'Experiment', 'Cron', 'Next fire', 'Last fired', 'Overlap', 'Enabled'],
      items.map((s) => h('tr', { 'data-schedule': s.id },
        h('td', {}, s.name),
        h('td', {}, h('a', { href: `#/experiments/${s.experiment_id}` }, exps.get(s.experiment_id) || s.experiment_id)),
        h('td', {}, h('code', {}, s.cron), ` ${s.time_zone}`),
        h('td', {}, s.enabled ? when(s.next_fire_at) : 'disabled'),
        h('td', {}, when(s.last_fired_at)),
        h('td', {}, s.overlap),
        h('td', {}, may('admin')
          ? h('button', { type: 'button', class: 'quiet', 'aria-label': `${s.enabled ? 'Disable' : 'Enable'} schedule ${s.name}`, onclick: () => toggle(s) }, s.enabled ? 'Disable' : 'Enable')
          : (s.enabled ? 'yes' : 'no')))),
      'No schedules.'));
  });
}

async function toggle(s) {
  const body = {
    name: s.name, experiment_id: s.experiment_id, cron: s.cron, time_zone: s.time_zone,
    overlap: s.overlap, blackouts: s.blackouts, missed: s.missed, enabled: !s.enabled,
  };
  try {
    await api.put(`/v1/schedules/${encodeURIComponent(s.id)}`, body);
    flash(`Schedule ${s.name} ${body.enabled ? 'enabled' : 'disabled'}.`);
  } catch (err) {
    flash(`Cannot change ${s.name}: ${errorText(err)}`, true);
  }
  route();
}

async function scheduleForm() {
  const exps = await api.get('/v1/experiments?limit=200');
  const field = (id, label, input, help) => h('div', { class: 'field' }, h('label', { for: id }, label), input, help ? h('span', { class: 'muted', id: `${id}-help` }, help) : null);
  const name = h('input', { id: 'sch-name', required: true });
  const exp = h('select', { id: 'sch-exp' }, exps.map((e) => h('option', { value: e.id }, `${e.name} (${e.id})`)));
  const cron = h('input', { id: 'sch-cron', required: true, placeholder: '0 0 14 * * TUE', 'aria-describedby': 'sch-cron-help' });
  const tz = h('input', { id: 'sch-tz', value: 'UTC', 'aria-describedby': 'sch-tz-help' });
  const overlap = h('select', { id: 'sch-overlap' }, ['skip', 'queue', 'replace'].map((o) => h('option', { value: o }, o)));
  const enabled = h('input', { id: 'sch-enabled', type: 'checkbox', checked: true });
  const err = h('p', { class: 'bad', role: 'alert' });
  const form = h('form', { class: 'stack card', 'aria-label': 'New schedule' },
    field('sch-name', 'Name', name),
    field('sch-exp', 'Experiment', exp),
    field('sch-cron', 'Cron', cron, '5 fields, or 6 with seconds first'),
    field('sch-tz', 'Time zone', tz, 'An IANA name, e.g. Europe/Berlin'),
    field('sch-overlap', 'If the previous run is still going', overlap),
    h('div', { class: 'row' }, enabled, h('label', { for: 'sch-enabled' }, 'Enabled')),
    h('div', { class: 'row' }, h('button', { type: 'submit', disabled: !exps.length }, 'Create schedule')),
    err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    try {
      await api.post('/v1/schedules', { name: name.value, experiment_id: exp.value, cron: cron.value, time_zone: tz.value || undefined, overlap: overlap.value, enabled: enabled.checked });
      flash(`Schedule ${name.value} created.`);
      route();
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  return form;
}

// === experiments ===

async function experimentsPage() {
  const list = await api.get('/v1/experiments?limit=200');
  const content = [
    h('h2', {}, 'Stored experiments'),
    table('Stored experiments', ['Name', 'Id', 'Stored', 'By'], list.map((e) => h('tr', {},
      h('td', {}, h('a', { href: `#/experiments/${e.id}` }, e.name)),
      h('td', {}, h('code', {}, e.id)), h('td', {}, when(e.created_at)), h('td', {}, e.created_by))), 'No experiments stored.'),
  ];
  if (may('operator')) content.push(h('h2', {}, 'Validate and store an experiment'), pasteForm());
  page('Experiments', ...content);
}

function pasteForm() {
  const ta = h('textarea', { id: 'yaml', rows: 18, spellcheck: 'false', 'aria-describedby': 'yaml-help', placeholder: 'version: faultline/v1\nname: ...' });
  const out = h('div', { id: 'validation', 'aria-live': 'polite' });
  const form = h('form', { class: 'stack card', 'aria-label': 'Validate and store an experiment' },
    h('div', { class: 'field' },
      h('label', { for: 'yaml' }, 'Experiment YAML (faultline/v1)'),
      ta,
      h('span', { id: 'yaml-help', class: 'muted' }, 'Validated by the controller; stored only when it validates. Errors name request.yaml:line:column.')),
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'store' }, 'Validate and store')),
    out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    try {
      const e = await api.post('/v1/experiments', { yaml: ta.value });
      flash(`Stored ${e.name} as ${e.id}.`);
      location.hash = `#/experiments/${e.id}`;
    } catch (err) {
      out.replaceChildren(h('p', { class: 'bad', role: 'alert' }, errorText(err)));
      if (err.diagnostics && err.diagnostics.length) out.append(diagnostics(err.diagnostics, ta));
    }
  });
  return form;
}

function diagnostics(list, ta) {
  return h('ul', { class: 'plain diagnostics', 'aria-label': 'Validation errors' }, list.map((d) => h('li', { 'data-line': d.line, 'data-column': d.column },
    h('button', { type: 'button', title: 'Show in the editor', onclick: () => caret(ta, d.line, d.column) }, `${d.file}:${d.line}:${d.column}`),
    `: ${d.severity}: ${d.message}${d.help ? ` (${d.help})` : ''}`)));
}

function caret(ta, line, column) {
  const lines = ta.value.split('\n');
  let pos = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
  pos += Math.max(0, column - 1);
  ta.focus();
  ta.setSelectionRange(pos, pos);
}

async function experimentPage(id) {
  const e = await api.get(`/v1/experiments/${encodeURIComponent(id)}`);
  const runs = await api.get(`/v1/runs?experiment_id=${encodeURIComponent(id)}&limit=20`);
  const content = [
    h('p', { class: 'muted' }, h('code', {}, e.id), ` stored by ${e.created_by}, `, when(e.created_at), '. It validated when stored.'),
  ];
  if (may('operator')) content.push(await startForm(e.id));
  content.push(
    h('h2', {}, 'YAML'),
    h('pre', { class: 'yaml', 'aria-label': `YAML of ${e.name}` }, e.yaml.split('\n').map((l) => h('span', { class: 'l' }, l || ' '))),
    h('h2', {}, 'Runs'),
    table('Runs of this experiment', ['Run', 'Status', 'Verdict', 'Started'], runs.map((r) => h('tr', {},
      h('td', {}, h('a', { href: `#/runs/${r.id}` }, r.id)), h('td', {}, badge(r.status)), h('td', {}, verdictText(r)), h('td', {}, when(r.started_at || r.created_at)))), 'Never run.'));
  page(e.name, ...content);
}

// === agents ===

async function agentsPage() {
  const box = h('div', { id: 'agents' });
  page('Agents', h('p', { class: 'muted' }, 'Every agent runs can reach, and the faults each holds now, as the agent answers.'), box);
  return every(2000, async () => {
    const agents = await api.get('/v1/agents');
    box.replaceChildren(table('Agents', ['Agent', 'Address', 'Labels', 'State', 'Active faults'], agents.map((a) => h('tr', { 'data-agent': a.name },
      h('td', {}, a.name),
      h('td', {}, a.url ? h('code', {}, a.url) : 'in the controller'),
      h('td', {}, Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(', ') || '–'),
      h('td', {}, a.reachable ? h('span', { class: 'ok' }, `up (v${a.version})`) : h('span', { class: 'bad' }, `unreachable: ${a.error || ''}`)),
      h('td', {}, a.faults.length
        ? h('ul', { class: 'plain' }, a.faults.map((f) => h('li', {}, h('code', {}, f.kind), ` ${f.id} (lease ${(f.expires_in_ms / 1000).toFixed(0)} s)`)))
        : 'none')))));
  });
}

// === routing ===

const ROUTES = [
  [/^#\/runs\/([\w-]+)$/, runPage, 'runs'],
  [/^#\/runs$/, runsPage, 'runs'],
  [/^#\/schedules$/, schedulesPage, 'schedules'],
  [/^#\/experiments\/([\w-]+)$/, experimentPage, 'experiments'],
  [/^#\/experiments$/, experimentsPage, 'experiments'],
  [/^#\/agents$/, agentsPage, 'agents'],
];

let generation = 0;

async function route() {
  if (!me) return;
  cleanup();
  cleanup = () => {};
  const mine = ++generation;
  const hash = location.hash || '#/runs';
  const found = ROUTES.find(([re]) => re.test(hash));
  if (!found) { location.hash = '#/runs'; return; }
  const [re, render, section] = found;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${section}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const args = hash.match(re).slice(1);
  try {
    const stop = await render(...args);
    if (typeof stop !== 'function') return;
    // A later navigation won the race: stop what this one started.
    if (mine !== generation) stop();
    else cleanup = stop;
  } catch (err) {
    if (mine === generation && err.status !== 401) page('Cannot show this page', h('p', { class: 'bad', role: 'alert' }, errorText(err)));
  }
}

window.addEventListener('hashchange', () => { clearFlash(); route(); main.focus(); });

async function start() {
  showChrome(true);
  if (!ROUTES.some(([re]) => re.test(location.hash))) history.replaceState(null, '', '#/runs');
  await route();
}

(async () => {
  const t = api.token();
  if (!t) { signIn(); return; }
  try {
    me = await api.get('/v1/me');
  } catch {
    api.clearToken();
    signIn();
    return;
  }
  start();
})();
