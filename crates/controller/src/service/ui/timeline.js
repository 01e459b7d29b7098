// The live timeline: tail latency (p99 solid, p50 dashed, per probe) above
// availability, on the run's seconds, with each fault step's window shaded and
// phase boundaries as dashed lines: the HTML report's chart
// (report/timeline.rs), with its colours, drawn as SVG as events arrive.

import { PALETTE } from './palette.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 1100;
const LAT_H = 300;
const AV_H = 230;
const M = { left: 58, right: 16, top: 26, bottom: 30 };

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

export class Timeline {
  constructor(container, title) {
    this.probes = new Map(); // name -> {color, points: [{t, bucket, p50, p99, avail}]}
    this.windows = new Map(); // step -> {start, end|null, agents:Set, open:Set(fault)}
    this.phases = [];
    this.now = 0;
    this.points = 0;
    this.svg = el('svg', { viewBox: `0 0 ${W} ${LAT_H + AV_H}`, role: 'img', 'aria-labelledby': 'tl-title tl-desc', 'data-points': 0, 'data-windows': 0 });
    this.title = el('title', { id: 'tl-title' }, title);
    this.desc = el('desc', { id: 'tl-desc' }, 'No data yet.');
    this.svg.append(this.title, this.desc);
    this.body = el('g');
    this.svg.append(this.body);
    this.legend = document.createElement('ul');
    this.legend.className = 'legend';
    this.legend.setAttribute('aria-label', 'Timeline legend');
    container.replaceChildren(this.svg, this.legend);
    this.dirty = false;
    this.render();
  }

  /** A settled probe bucket (a `window` event). */
  point(probe, p) {
    let s = this.probes.get(probe);
    if (!s) {
      s = { color: PALETTE.lines[this.probes.size % PALETTE.lines.length], points: [] };
      this.probes.set(probe, s);
    }
    const prev = s.points[s.points.length - 1];
    const bucket = prev && p.t_s > prev.t ? p.t_s - prev.t : (prev ? prev.bucket : 1);
    s.points.push({ t: p.t_s, bucket, p50: num(p.p50_ms), p99: num(p.p99_ms), avail: num(p.availability) });
    this.points += 1;
    this.now = Math.max(this.now, p.t_s + bucket);
    this.schedule();
  }

  phase(name, at) {
    this.phases.push({ name, at });
    this.at(at);
  }

  injected(step, fault, agent, at) {
    let w = this.windows.get(step);
    if (!w) {
      w = { start: at, end: null, agents: new Set(), open: new Set(), index: this.windows.size };
      this.windows.set(step, w);
    }
    w.start = Math.min(w.start, at);
    w.agents.add(agent);
    w.open.add(fault);
    w.end = null;
    this.at(at);
  }

  reverted(step, fault, at) {
    const w = this.windows.get(step);
    if (!w) return;
    w.open.delete(fault);
    if (w.open.size === 0) w.end = Math.max(w.end ?? at, at);
    this.at(at);
  }

  /** The run's clock moved to `at` (an event's `at_s`). */
  at(at) {
    if (Number.isFinite(at)) this.now = Math.max(this.now, at);
    this.schedule();
  }

  schedule() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => { this.dirty = false; this.render(); });
  }

  render() {
    const x0 = 0;
    const x1 = Math.max(1, this.now);
    let p99max = 0;
    let availMin = 100;
    for (const s of this.probes.values()) {
      for (const p of s.points) {
        if (p.p99 !== null) p99max = Math.max(p99max, p.p99);
        if (p.p50 !== null) p99max = Math.max(p99max, p.p50);
        if (p.avail !== null) availMin = Math.min(availMin, p.avail);
      }
    }
    const availFloor = Math.max(0, Math.floor(Math.min(availMin, 95) / 5) * 5);
    const g = el('g');
    g.append(this.panel({ top: 0, h: LAT_H, y0: 0, y1: Math.max(p99max * 1.15, 10), caption: 'latency', unit: 'ms', x0, x1, name: 'latency',
      series: [...this.probes].flatMap(([n, s]) => [
        { probe: n, kind: 'p99', color: s.color, dashed: false, pts: s.points.map((p) => [p.t + p.bucket / 2, p.p99]) },
        { probe: n, kind: 'p50', color: s.color, dashed: true, pts: s.points.map((p) => [p.t + p.bucket / 2, p.p50]) },
      ]) }));
    g.append(this.panel({ top: LAT_H, h: AV_H, y0: availFloor, y1: 100.5, caption: 'availability', unit: '%', x0, x1, name: 'availability',
      series: [...this.probes].map(([n, s]) => ({ probe: n, kind: 'availability', color: s.color, dashed: false, pts: s.points.map((p) => [p.t + p.bucket / 2, p.avail]) })) }));
    this.body.replaceWith(g);
    this.body = g;
    const open = [...this.windows.values()].filter((w) => w.end === null).length;
    const firstFault = Math.min(...[...this.windows.values()].map((w) => w.start));
    let during = 0;
    for (const s of this.probes.values()) during += s.points.filter((p) => p.t + p.bucket / 2 >= firstFault).length;
    this.svg.setAttribute('data-points', this.points);
    this.svg.setAttribute('data-points-in-faults', during);
    this.svg.setAttribute('data-windows', this.windows.size);
    this.svg.setAttribute('data-open-windows', open);
    this.desc.textContent = this.describe();
    this.renderLegend();
  }

  panel({ top, h, y0, y1, caption, unit, x0, x1, series, name }) {
    const g = el('g', { 'data-panel': name });
    const L = M.left;
    const R = W - M.right;
    const T = top + M.top;
    const B = top + h - M.bottom;
    const sx = (v) => L + ((v - x0) / (x1 - x0)) * (R - L);
    const sy = (v) => B - ((v - y0) / (y1 - y0)) * (B - T);
    g.append(el('text', { x: L, y: top + 16, 'font-size': 14, 'font-weight': 600, fill: '#1f2328' }, caption));
    // Fault windows first, under everything else.
    for (const [step, w] of this.windows) {
      const shade = PALETTE.shades[w.index % PALETTE.shades.length];
      const end = w.end ?? x1;
      const state = w.end === null ? 'injected' : 'reverted';
      const rect = el('rect', {
        class: 'fault-window', 'data-step': step, 'data-state': state,
        x: sx(w.start), y: T, width: Math.max(1, sx(end) - sx(w.start)), height: B - T,
        fill: shade, 'fill-opacity': PALETTE.shade_alpha,
      });
      g.append(rect);
      if (state === 'injected') {
        // Still active: its right edge is now, drawn as a dashed line.
        g.append(el('line', { x1: sx(end), x2: sx(end), y1: T, y2: B, stroke: shade, 'stroke-width': 2, 'stroke-dasharray': '4 3' }));
      }
      g.append(el('rect', { x: sx(w.start), y: T, width: Math.max(1, sx(end) - sx(w.start)), height: 3, fill: shade }));
      const label = `${step}${w.agents.size > 1 ? ` (${w.agents.size} agents)` : ''}${state === 'injected' ? ' (active)' : ''}`;
      // A window near the right edge is labelled leftwards, so the label stays on the chart.
      const rightwards = sx(w.start) < R - 8 * label.length;
      g.append(el('text', { x: rightwards ? sx(w.start) + 4 : R - 4, y: T + 16 + 14 * (w.index % 3), 'font-size': 12, fill: '#1f2328', 'text-anchor': rightwards ? 'start' : 'end' }, label));
    }
    // Axes, ticks, grid.
    g.append(el('line', { x1: L, x2: L, y1: T, y2: B, stroke: '#57606a' }));
    g.append(el('line', { x1: L, x2: R, y1: B, y2: B, stroke: '#57606a' }));
    for (const v of ticks(y0, y1, 5)) {
      g.append(el('line', { x1: L - 4, x2: L, y1: sy(v), y2: sy(v), stroke: '#57606a' }));
      g.append(el('text', { x: L - 7, y: sy(v) + 4, 'font-size': 11, 'text-anchor': 'end', fill: '#1f2328' }, fmt(v)));
    }
    for (const v of ticks(x0, x1, 10)) {
      g.append(el('line', { x1: sx(v), x2: sx(v), y1: B, y2: B + 4, stroke: '#57606a' }));
      g.append(el('text', { x: sx(v), y: B + 16, 'font-size': 11, 'text-anchor': 'middle', fill: '#1f2328' }, fmt(v)));
    }
    g.append(el('text', { x: 14, y: (T + B) / 2, 'font-size': 11, fill: '#57606a', transform: `rotate(-90 14 ${(T + B) / 2})`, 'text-anchor': 'middle' }, unit));
    if (name === 'availability') {
      g.append(el('text', { x: R, y: B + 27, 'font-size': 11, 'text-anchor': 'end', fill: '#57606a' }, "seconds from the run's start"));
    }
    let lastLabel = -Infinity;
    let row = 0;
    for (const p of this.phases) {
      if (p.at < x0) continue;
      g.append(el('line', { x1: sx(p.at), x2: sx(p.at), y1: T, y2: B, stroke: PALETTE.phase, 'stroke-dasharray': '4 4' }));
      const nearEnd = x1 - p.at < (x1 - x0) * 0.08;
      // Phases a moment apart (preflight, baseline) get their labels stacked.
      row = sx(p.at) - lastLabel < 70 ? row + 1 : 0;
      lastLabel = sx(p.at);
      g.append(el('text', { x: sx(p.at) + (nearEnd ? -3 : 3), y: B - 5 - 12 * row, 'font-size': 11, fill: PALETTE.phase, 'text-anchor': nearEnd ? 'end' : 'start' }, p.name));
    }
    // Series: a bucket without a figure breaks the line.
    for (const s of series) {
      const segments = [];
      let cur = [];
      for (const [t, v] of s.pts) {
        if (v === null) { if (cur.length) segments.push(cur); cur = []; continue; }
        cur.push(`${sx(t).toFixed(1)},${sy(Math.max(y0, Math.min(y1, v))).toFixed(1)}`);
      }
      if (cur.length) segments.push(cur);
      for (const seg of segments) {
        const attrs = { class: 'series', 'data-probe': s.probe, 'data-series': s.kind, points: seg.join(' '), fill: 'none', stroke: s.color, 'stroke-width': s.dashed ? 1 : 2 };
        if (s.dashed) attrs['stroke-dasharray'] = '5 3';
        g.append(seg.length === 1
          ? el('circle', { cx: seg[0].split(',')[0], cy: seg[0].split(',')[1], r: 2.5, fill: s.color, 'data-probe': s.probe, 'data-series': s.kind })
          : el('polyline', attrs));
      }
    }
    if (!this.probes.size) {
      g.append(el('text', { x: (L + R) / 2, y: (T + B) / 2, 'font-size': 14, 'text-anchor': 'middle', fill: '#57606a' }, 'waiting for the first probe window'));
    }
    return g;
  }

  renderLegend() {
    const items = [];
    for (const [name, s] of this.probes) {
      items.push(legend(`${name} p99`, 'line', s.color));
      items.push(legend(`${name} p50`, 'dashed', s.color));
    }
    for (const [step, w] of this.windows) {
      const shade = PALETTE.shades[w.index % PALETTE.shades.length];
      items.push(legend(`${step}: ${w.end === null ? 'injected' : 'reverted'}`, 'shade', shade));
    }
    this.legend.replaceChildren(...items);
  }

  describe() {
    if (!this.probes.size) return 'No probe data yet.';
    const parts = [];
    for (const [name, s] of this.probes) {
      const last = s.points[s.points.length - 1];
      parts.push(`${name}: ${s.points.length} windows, latest availability ${fmt(last.avail)}%, p99 ${fmt(last.p99)} ms`);
    }
    for (const [step, w] of this.windows) {
      parts.push(`fault ${step} ${w.end === null ? `injected at ${fmt(w.start)} s, still active` : `from ${fmt(w.start)} s to ${fmt(w.end)} s`}`);
    }
    return `${parts.join('; ')}.`;
  }
}

function legend(text, kind, color) {
  const li = document.createElement('li');
  const sw = document.createElement('span');
  sw.className = `sw ${kind === 'shade' ? '' : kind === 'dashed' ? 'dashed' : 'line'}`;
  sw.setAttribute('aria-hidden', 'true');
  if (kind === 'shade') {
    sw.style.backgroundColor = color;
    sw.style.opacity = String(Math.max(0.35, PALETTE.shade_alpha * 2));
  } else if (kind === 'dashed') {
    sw.style.borderTopColor = color;
  } else {
    sw.style.backgroundColor = color;
  }
  li.append(sw, document.createTextNode(text));
  return li;
}

function num(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function fmt(v) {
  if (v === null || v === undefined) return '–';
  const a = Math.abs(v);
  return a >= 100 || Number.isInteger(v) ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/0$/, '');
}

/** About `n` round tick values in [a, b]. */
function ticks(a, b, n) {
  const span = b - a;
  if (!(span > 0)) return [a];
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(a / step) * step; v <= b + 1e-9 && out.length < 50; v += step) out.push(Math.round(v * 1e6) / 1e6);
  return out;
}
