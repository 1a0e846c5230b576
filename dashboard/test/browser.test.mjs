// The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against a running cluster. Started by tests/e2e/dashboard_browser_e2etest.cc, which makes the
// cluster, the tenant, an admin key and an operator token, and passes them in the environment:
//   ISORUN_API_URL, ISORUN_API_KEY (admin), ISORUN_ADMIN_TOKEN, ISORUN_SCREENSHOTS (a folder),
//   ISORUN_SANDBOX_IMAGE, ISORUN_EXEC=1 when sandboxes run commands (runc runners).
// Selectors are the page's accessible names and roles.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

const api = process.env.ISORUN_API_URL;
const key = process.env.ISORUN_API_KEY;
const token = process.env.ISORUN_ADMIN_TOKEN;
const shots = process.env.ISORUN_SCREENSHOTS ?? 'screenshots';
const image = process.env.ISORUN_SANDBOX_IMAGE ?? 'busybox:1.36';
const canExec = process.env.ISORUN_EXEC === '1';
if (!api || !key || !token) throw new Error('needs ISORUN_API_URL, ISORUN_API_KEY, ISORUN_ADMIN_TOKEN');
mkdirSync(shots, { recursive: true });

let browser;
let page;

async function callApi(method, path, secret, body) {
  const res = await fetch(api + path, {
    method,
    headers: { Authorization: `Bearer ${secret}`,
               ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

before(async () => {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${api}/dashboard/`);
  await page.getByLabel('API key', { exact: true }).fill(key);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
  assert.ok(!page.url().includes(key), 'the key never goes into a URL');
});

after(async () => {
  await browser?.close();
});

test('a sandbox created through the API appears, and its console runs echo hi', async (t) => {
  const created = await callApi('POST', '/v1/sandboxes', key,
                                { image, metadata: { from: 'browser-test' } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  const link = page.getByRole('table', { name: 'Sandboxes' }).getByRole('link', { name: id });
  await link.waitFor();  // the table refreshes every 3 s
  await shot('sandboxes');

  await link.click();
  await page.getByRole('heading', { name: `Sandbox ${id}` }).waitFor();
  // The timeline comes from GET /v1/sandboxes/{id}/events: the same steps, in the same order.
  const events = page.getByRole('list', { name: 'Events' });
  await events.locator('li[data-kind="STARTED"]').waitFor();
  const fromApi = await callApi('GET', `/v1/sandboxes/${id}/events`, key);
  assert.equal(fromApi.status, 200, JSON.stringify(fromApi.body));
  const kinds = await events.locator('li').evaluateAll((items) => items.map((li) => li.dataset.kind));
  assert.deepEqual(kinds, fromApi.body.events.map((e) => e.kind));
  // PULLING too when the runner had to fetch the image first (the cluster's first busybox).
  assert.deepEqual(kinds.filter((k) => k !== 'PULLING').slice(0, 3), ['CREATED', 'PLACED', 'STARTED']);
  if (!canExec) {
    t.diagnostic('exec skipped: the runners are simulated (no runc here), so exec answers 501');
    await shot('sandbox');
    return;
  }
  await page.getByLabel('Command', { exact: true }).fill('echo hi');
  await page.getByRole('button', { name: 'Run' }).click();
  const log = page.getByRole('log', { name: 'Console output' });
  await log.filter({ hasText: '[exit 0]' }).waitFor();
  const text = await log.textContent();
  assert.match(text, /\$ echo hi\nhi\n\[exit 0\]/);
  await shot('sandbox');
});

test('a create that pulls a cold image shows the pull from the sandbox\'s startProgress', async (t) => {
  if (!canExec) {
    t.skip('needs runc runners: simulated runners pull nothing');
    return;
  }
  // fat:1.0 (the test registry's image with a 48 MiB random layer) is on no runner yet.
  await page.getByRole('link', { name: 'Sandboxes', exact: true }).click();
  await page.getByRole('heading', { name: 'Sandboxes', exact: true }).waitFor();
  await page.getByLabel('Image', { exact: true }).fill('fat:1.0');
  await page.getByRole('button', { name: 'Create sandbox' }).click();
  const status = page.locator('#create-progress');
  // The page shows the runner's own figures, polled from GET /v1/sandboxes while the create runs.
  await status.filter({ hasText: /Pulling the image: [0-9.]+ [KMG]?i?B of [0-9.]+ MiB|Unpacking the image/ })
    .waitFor({ timeout: 60000 });
  await shot('create-pulling');
  await status.filter({ hasText: /^Created \S+ in/ }).waitFor({ timeout: 120000 });
  const id = (await status.textContent()).match(/Created (\S+) in/)[1];
  const events = await callApi('GET', `/v1/sandboxes/${id}/events`, key);
  assert.deepEqual(events.body.events.map((e) => e.kind).slice(0, 4),
                   ['CREATED', 'PLACED', 'PULLING', 'STARTED']);
  assert.equal((await callApi('DELETE', `/v1/sandboxes/${id}`, key)).status, 204);
});

test('a key created and revoked in the page fails its next API call with 401', async () => {
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.getByRole('heading', { name: 'API keys' }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('browser test');
  await page.getByLabel('Role', { exact: true }).selectOption('sandbox');
  await page.getByRole('button', { name: 'Create key' }).click();
  const field = page.getByLabel('New API key', { exact: true });
  await field.waitFor();
  const newKey = await field.inputValue();
  assert.match(newKey, /^isr_local_[A-Za-z0-9]+_[A-Za-z0-9]+$/);
  assert.equal((await callApi('GET', '/v1/usage', newKey)).status, 200);
  await shot('keys');

  await page.getByRole('button', { name: 'Revoke key browser test' }).click();
  const dialog = page.getByRole('dialog', { name: 'Revoke key?' });
  await dialog.getByRole('button', { name: 'Revoke' }).click();
  await page.getByRole('table', { name: 'API keys' }).getByText('revoked').waitFor();
  const after = await callApi('GET', '/v1/usage', newKey);
  assert.equal(after.status, 401);
  assert.equal(after.body.error.reason, 'KEY_REVOKED');
});

test('usage against limits, with charts', async () => {
  await page.getByRole('link', { name: 'Usage' }).click();
  await page.getByRole('meter', { name: 'Running sandboxes' }).waitFor();
  const charts = page.locator('figure.chart');
  await charts.first().waitFor();
  assert.ok((await charts.count()) >= 4);
  await page.getByRole('table', { name: '429s by reason' }).waitFor();
  await shot('usage');
});

test('operator charts render the points of the history API', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Operator token', { exact: true }).fill(token);
  await page.getByRole('button', { name: 'Sign in as operator' }).click();
  await page.getByRole('table', { name: 'Runners' }).waitFor();
  await page.getByRole('list', { name: 'Time until capacity runs out' }).waitFor();

  const to = new Date();
  const from = new Date(to.getTime() - 3600e3);
  const history = await callApi('GET',
    `/v1/admin/capacity/history?from=${from.toISOString()}&to=${to.toISOString()}&step=30`, token);
  assert.equal(history.status, 200, JSON.stringify(history.body));
  assert.ok(history.body.fleet.length > 0, 'the scheduler has recorded snapshots');

  const utilisation = page.getByRole('img', { name: /^Fleet utilisation/ });
  await utilisation.waitFor();
  const points = Number(await utilisation.getAttribute('data-points'));
  assert.ok(points > 0, 'the chart has data points');
  // The page asked for the same hour (its own step): every point it shows came from the API.
  assert.ok(points <= history.body.fleet.length + 1, `${points} points, the API has ${history.body.fleet.length}`);
  assert.equal(await utilisation.locator('canvas').count(), 1, 'uPlot drew it');
  for (const name of [/^Creates per second/, /^429 CAPACITY/, /^Pre-warming/, /^Sandboxes by state/]) {
    await page.getByRole('img', { name }).locator('canvas').waitFor();
  }
  // Sandboxes by state and 429 CAPACITY by region come from the same history and capacity APIs.
  assert.ok(history.body.fleet.every((p) => typeof p.sandboxesByState?.RUNNING === 'number'));
  const states = page.getByRole('img', { name: /^Sandboxes by state/ });
  assert.ok(Number(await states.getAttribute('data-points')) > 0, 'the states chart has points');
  const now = await callApi('GET', '/v1/admin/capacity', token);
  assert.equal(typeof now.body.capacityRefusals.total, 'number');
  await page.getByRole('table', { name: '429 CAPACITY by region' }).getByText('all regions').waitFor();
  await shot('operator');

  // A narrow screen: the layout still holds.
  await page.setViewportSize({ width: 420, height: 900 });
  await page.getByRole('table', { name: 'Runners' }).waitFor();
  await shot('operator-narrow');
});
