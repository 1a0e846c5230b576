// The OpenAPI document as the gateway serves it, and answers outside the SDK's happy paths
// (no key, a bad body, the health check) checked against it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';

import { API_KEY, API_URL, OPENAPI_PATH, assertNoViolations, checked, checkingFetch } from './support.js';

after(() => assertNoViolations());

test('GET /v1/openapi.json needs no key and is the document in the repository', async () => {
  const response = await checkingFetch(`${API_URL()}/v1/openapi.json`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
  const served = (await response.json()) as Record<string, unknown>;
  assert.deepEqual(served, JSON.parse(readFileSync(OPENAPI_PATH, 'utf8')));
  assert.equal(served['openapi'], '3.1.0');
});

test('error answers fit the document: no key, a bad body, an unknown id, a wrong method', async () => {
  const json = { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY()}` };
  const answers = [
    await checkingFetch(`${API_URL()}/v1/sandboxes`),
    await checkingFetch(`${API_URL()}/v1/sandboxes`, { method: 'POST', headers: json, body: '{"image": 1}' }),
    await checkingFetch(`${API_URL()}/v1/sandboxes`, { method: 'POST', headers: json, body: '{"image":"a:1","bogus":true}' }),
    await checkingFetch(`${API_URL()}/v1/sandboxes/sbx_nothing0000/timeout`, { method: 'POST', headers: json, body: '{"timeoutSec":5}' }),
    await checkingFetch(`${API_URL()}/v1/sandboxes?pageSize=0`, { headers: json }),
    await checkingFetch(`${API_URL()}/healthz`),
  ];
  assert.deepEqual(answers.map((a) => a.status), [401, 400, 400, 404, 400, 200]);
  assert.equal(answers[0]?.headers.get('www-authenticate'), 'Bearer realm="isorun"');
  for (const a of answers) assert.ok((a.headers.get('x-request-id') ?? '').length > 0);
  await Promise.all(answers.map((a) => a.text()));
  await new Promise((r) => setTimeout(r, 50)); // the side checks finish
  const operations = new Set(checked.map((c) => c.operation));
  for (const op of ['getOpenApi', 'getHealth', 'listSandboxes', 'createSandbox', 'setSandboxTimeout']) {
    assert.ok(operations.has(op), `no answer of ${op} was checked`);
  }
});
