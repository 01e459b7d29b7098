// The dashboard's browser test, run by tests/e2e/ui.rs against a real
// `faultline serve` and the demo target. playwright-core drives Debian's
// Chromium (no browser download). Every wait has its own timeout; the Rust test
// bounds the whole script. Exit 77: Chromium cannot start here (the test skips).
//
// Env: FAULTLINE_URL, FAULTLINE_ADMIN/OPERATOR/VIEWER (tokens), EXPERIMENT_FILE,
// ARTIFACTS (screenshots), CHROMIUM, USER_DATA_DIR.

import { readFileSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) { console.error(`dashboard: ${k} is not set`); process.exit(2); }
  return v;
};
const API = new globalThis.URL(env('FAULTLINE_URL'));
const TOKENS = { admin: env('FAULTLINE_ADMIN'), operator: env('FAULTLINE_OPERATOR'), viewer: env('FAULTLINE_VIEWER') };
const YAML = readFileSync(env('EXPERIMENT_FILE'), 'utf8');
const ARTIFACTS = env('ARTIFACTS');
mkdirSync(ARTIFACTS, { recursive: true });

const log = (...a) => console.log('dashboard:', ...a);

// The browser reaches the controller through this TCP relay, so the test can cut
// every connection (as a proxy restart or a Wi-Fi drop would) and watch the run
// page resume its event stream.
const sockets = new Set();
const relay = net.createServer((client) => {
  const upstream = net.connect(Number(API.port), API.hostname);
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  }
  client.pipe(upstream).pipe(client);
});
await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve));
const URL = `http://127.0.0.1:${relay.address().port}`;
let cut = false;
const cutConnections = () => { cut = true; for (const s of sockets) s.destroy(); };
const T = { short: 10_000, run: 30_000 };

let context;
try {
  context = await chromium.launchPersistentContext(env('USER_DATA_DIR'), {
    executablePath: env('CHROMIUM'),
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync'],
    viewport: { width: 1366, height: 768 }, // a laptop screen
    timeout: 30_000,
  });
} catch (err) {
  console.log(`dashboard: Chromium cannot start: ${err.message.split('\n')[0]}`);
  process.exit(77);
}

const problems = [];
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(T.short);
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  const text = m.text();
  // Chromium logs every failed fetch; the 401 of the unknown token and the 422 of
  // the invalid experiment are what this test asks for.
  // So is what cutting the connections breaks.
  const expected = /^Failed to load resource: the server responded with a status of (401|422)/.test(text)
    || (cut && /^Failed to load resource: net::ERR_(INCOMPLETE_CHUNKED_ENCODING|CONNECTION_RESET|EMPTY_RESPONSE|CONNECTION_CLOSED)/.test(text));
  if (m.type() === 'error' && !expected) problems.push(`console error: ${text}`);
  for (const t of Object.values(TOKENS)) if (text.includes(t)) problems.push('a token was logged to the console');
});
page.on('request', (r) => {
  for (const t of Object.values(TOKENS)) if (r.url().includes(t)) problems.push(`a token was put in a URL: ${r.method()} ${r.url().split('?')[0]}`);
});

const expect = (cond, what) => { if (!cond) throw new Error(`expected: ${what}`); };
const shot = async (name) => {
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, fullPage: true });
  log(`screenshot ${path}`);
};

/** Every form control on the page has a label, every button a name. */
async function labelled(where) {
  const bad = await page.evaluate(() => {
    const out = [];
    for (const el of document.querySelectorAll('main input, main select, main textarea, dialog input')) {
      if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) out.push(`${el.tagName.toLowerCase()}#${el.id}`);
    }
    for (const b of document.querySelectorAll('button')) {
      if (!b.textContent.trim() && !b.getAttribute('aria-label')) out.push(`button#${b.id}`);
    }
    return out;
  });
  expect(bad.length === 0, `${where}: labelled controls, unlabelled: ${bad.join(', ')}`);
}

async function signIn(role) {
  await page.getByLabel('API token').fill(TOKENS[role]);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who').filter({ hasText: `· ${role}` }).waitFor();
  log(`signed in as ${role}`);
}

async function signOut() {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API token').waitFor();
}

try {
  await page.goto(URL);
  // Keyboard: the sign-in page starts in the token field, with only the skip link before it.
  expect(await page.evaluate(() => document.activeElement?.id) === 'token', 'focus starts in the token field');
  await page.keyboard.press('Shift+Tab');
  expect(await page.evaluate(() => document.activeElement?.textContent) === 'Skip to content', 'the skip link comes first');
  // An unknown token is refused with a message, and nothing else is shown.
  await page.getByLabel('API token').fill('not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'does not know this token' }).waitFor();
  expect(await page.locator('#nav').isHidden(), 'no navigation before sign-in');

  await labelled('sign-in');
  await signIn('operator');
  expect(await page.locator('#halt').isHidden(), 'an operator sees no halt button');

  // An invalid experiment: the validator's located diagnostics, from the 422 body.
  await page.getByRole('link', { name: 'Experiments' }).click();
  const invalid = YAML.replace('description:', 'bogus: 1\ndescription:');
  const bogusLine = invalid.split('\n').findIndex((l) => l.startsWith('bogus:')) + 1;
  await page.getByLabel('Experiment YAML (faultline/v1)').fill(invalid);
  await page.getByRole('button', { name: 'Validate and store' }).click();
  const diag = page.locator('.diagnostics li').first();
  await diag.waitFor();
  const diagText = await diag.innerText();
  expect(diagText.includes(`request.yaml:${bogusLine}:1`) && diagText.includes('bogus'), `a located error at request.yaml:${bogusLine}:1, got: ${diagText}`);
  log(`invalid experiment: ${diagText}`);
  await labelled('experiments');
  await shot('experiment-invalid.png');

  // A valid one is stored; its page shows the YAML and starts runs.
  await page.getByLabel('Experiment YAML (faultline/v1)').fill(YAML);
  await page.getByRole('button', { name: 'Validate and store' }).click();
  await page.waitForURL(/#\/experiments\/exp_/);
  await page.locator('pre.yaml').filter({ hasText: 'stall-jobs-table' }).waitFor();
  await page.getByRole('button', { name: 'Start run' }).click();
  await page.waitForURL(/#\/runs\/run_/);
  const runId = page.url().split('#/runs/')[1];
  await labelled('run');
  log(`run ${runId}`);

  // Live: the timeline gains points, a fault window is shaded while injected.
  const svg = page.locator('#timeline svg');
  const points = async () => Number(await svg.getAttribute('data-points'));
  await page.waitForFunction(() => Number(document.querySelector('#timeline svg')?.getAttribute('data-points')) >= 2, null, { timeout: T.run });
  await page.locator('rect.fault-window[data-state="injected"]').first().waitFor({ timeout: T.run });
  const before = await points();
  // Points keep coming while the fault is active, inside its window, which grows.
  await page.waitForFunction(() => Number(document.querySelector('#timeline svg').getAttribute('data-points-in-faults')) >= 2, null, { timeout: T.run });
  const shaded = page.locator('rect.fault-window[data-state="injected"]');
  expect(await shaded.count() >= 1, 'the window is still shaded as injected while it is active');
  const width = Number(await shaded.first().getAttribute('width'));
  expect(width >= 20, `the active window has grown on the chart (width ${width})`);
  expect(await page.locator('#run-status [data-status="running"]').count() === 1, 'the run is running');
  await page.locator('#faults [data-agent="local"] tr[data-state="injected"]').first().waitFor();
  expect(await page.locator('polyline.series[data-series="p99"]').count() >= 1, 'a p99 line is drawn');
  log(`timeline went from ${before} to ${await points()} windows with a fault window shaded`);
  await shot('run-live.png');

  // A dropped stream resumes after the last event seen (Last-Event-ID): every
  // event shown once, in order, none missing.
  const seenBefore = await points();
  const reconnected = page.waitForRequest((r) => r.url().includes('/events') && r.headers()['last-event-id'] !== undefined, { timeout: T.run });
  cutConnections();
  const resumed = await reconnected;
  log(`stream cut; resumed with Last-Event-ID ${resumed.headers()['last-event-id']}`);
  await page.waitForFunction((n) => Number(document.querySelector('#timeline svg').getAttribute('data-points')) > n, seenBefore, { timeout: T.run });
  const ids = (await page.locator('#events li').evaluateAll((lis) => lis.map((li) => li.dataset.id))).filter(Boolean).map(Number).reverse();
  expect(ids.every((id, i) => id === i + 1), `events 1..${ids.length} once each after the reconnect, got ${ids.join(',')}`);
  log(`stream dropped and resumed: events 1..${ids.length}, each once`);

  // Abort: every fault reverted, status aborted.
  await page.getByRole('button', { name: 'Abort run' }).click();
  await page.locator('#run-status [data-status="aborted"]').waitFor({ timeout: T.run });
  const rows = page.locator('#faults tr[data-fault]');
  const n = await rows.count();
  expect(n >= 1, 'the faults table lists the run\'s faults');
  for (let i = 0; i < n; i++) {
    const state = await rows.nth(i).getAttribute('data-state');
    expect(state === 'reverted', `fault ${i} reverted, is ${state}`);
  }
  expect(await page.locator('rect.fault-window[data-state="injected"]').count() === 0, 'no window left shaded as injected');
  expect(await page.locator('rect.fault-window[data-state="reverted"]').count() >= 1, 'the window is shaded as reverted');
  expect(await page.locator('#faults [data-agent="local"] [data-active="0"]').count() === 1, 'no fault active on local');
  expect(await page.locator('#abort').isHidden(), 'no abort button once the run ended');
  log(`aborted; ${n} fault(s) reverted`);
  await shot('run-aborted.png');

  // A viewer sees the run but no abort, halt, start or store control.
  await signOut();
  await signIn('viewer');
  await page.goto(`${URL}/#/runs/${runId}`);
  await page.locator('#run-status [data-status="aborted"]').waitFor();
  await page.locator('#faults tr[data-state="reverted"]').first().waitFor();
  expect(await page.locator('#abort').count() === 0, 'a viewer has no abort button');
  expect(await page.locator('#halt').isHidden(), 'a viewer has no halt button');
  await shot('run-viewer.png');
  await page.getByRole('link', { name: 'Runs' }).click();
  await page.locator(`#runs tr[data-run="${runId}"]`).waitFor();
  expect(await page.locator('#start-run').count() === 0, 'a viewer cannot start runs');
  await page.getByRole('link', { name: 'Experiments' }).click();
  await page.getByRole('heading', { name: 'Stored experiments' }).waitFor();
  expect(await page.locator('#yaml').count() === 0, 'a viewer cannot store experiments');
  log('viewer: no abort, halt, start or store control');

  // An admin: schedules from the stored experiment, agents, halt behind a confirm step.
  await signOut();
  await signIn('admin');
  await page.getByRole('link', { name: 'Schedules' }).click();
  await labelled('schedules');
  await page.getByLabel('Name').fill('ui-gameday');
  await page.getByLabel('Cron').fill('0 0 3 1 1 *');
  await page.getByRole('button', { name: 'Create schedule' }).click();
  const sch = page.locator('#schedules tr', { hasText: 'ui-gameday' });
  await sch.locator('time').first().waitFor(); // its next fire
  await sch.getByRole('button', { name: 'Disable schedule ui-gameday' }).click();
  await sch.getByRole('button', { name: 'Enable schedule ui-gameday' }).waitFor();
  log('schedule created and disabled');
  await page.getByRole('link', { name: 'Agents' }).click();
  await page.locator('#agents tr[data-agent="local"]').filter({ hasText: 'none' }).waitFor();
  await page.getByRole('button', { name: 'Halt all' }).click();
  const dialog = page.getByRole('dialog', { name: 'Halt everything?' });
  await dialog.waitFor();
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.getByRole('button', { name: 'Halt all' }).click();
  await dialog.getByRole('button', { name: 'Halt every run and agent' }).click();
  await page.locator('#flash').filter({ hasText: 'Halted: 0 run(s) aborted' }).waitFor();
  log('halt: confirmed, nothing was running');

  const token = await page.evaluate(() => sessionStorage.getItem('faultline.token'));
  expect(token === TOKENS.admin, 'the token is kept in sessionStorage');
  expect(!page.url().includes(TOKENS.admin), 'no token in the URL');
  if (problems.length) throw new Error(problems.join('\n'));
  log('ok');
} catch (err) {
  await shot('failure.png').catch(() => {});
  console.error(`dashboard: FAILED at ${page.url()}: ${err.stack || err}`);
  if (problems.length) console.error(problems.join('\n'));
  await context.close().catch(() => {});
  process.exit(1);
}
await context.close();
relay.close();
cutConnections();
