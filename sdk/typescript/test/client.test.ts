// Keys, endpoints, errors and retries: against the live cluster where the cluster can show it
// (revoked keys, rate limits, the concurrent limit), and a counting loopback server where the
// point is that nothing reaches any server.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';

import {
  ApiKeyError,
  AuthenticationError,
  ConnectionError,
  InvalidArgumentError,
  Isorun,
  RateLimitError,
  type RetryInfo,
  Sandbox,
  apiUrlForRegion,
  parseApiKey,
} from './exports.js';
import { API_KEY, API_URL, assertNoViolations, checkingFetch, client, ctl, destroyMade, eventually, made, newTenant, sleep } from './support.js';

after(async () => {
  await destroyMade();
  assertNoViolations();
});

/** Runs `fn` with these environment variables (undefined removes one), then restores them. */
async function withEnvAsync(vars: Record<string, string | undefined>, fn: () => Promise<void>): Promise<void> {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T): T {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

const SECRET = 'S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tX';

describe('keys are checked before any request', () => {
  let server: http.Server;
  let requests = 0;
  let url = '';
  before(async () => {
    server = http.createServer((_req, res) => {
      requests++;
      res.writeHead(500).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  // Read before the cases clear ISORUN_API_KEY from the environment.
  const liveKey = API_KEY();
  const live = (): string => liveKey;
  const cases: Array<[string, () => string | undefined, RegExp]> = [
    ['missing', () => undefined, /missing: pass apiKey or set ISORUN_API_KEY/],
    ['empty', () => '  ', /missing/],
    ['another prefix', () => `sk_${live().slice(4)}`, /does not start with "isr_"/],
    ['truncated secret', () => live().slice(0, -8), /secret is 35 characters, at least 43 expected \(a truncated key\?\)/],
    ['secret cut off', () => live().slice(0, live().lastIndexOf('_') + 1), /secret part is empty/],
    ['missing part', () => `isr_local_${SECRET}`, /has 3 parts separated by "_", not 4/],
    ['bad region', () => `isr_Local_abc_${SECRET}`, /region part must be/],
    ['edited secret', () => `isr_local_abc_${SECRET.slice(0, -1)}!`, /secret part must be letters and digits/],
  ];
  for (const [name, key, message] of cases) {
    test(`${name}: ApiKeyError, no request, no secret in the message`, async () => {
      await withEnvAsync({ ISORUN_API_KEY: undefined }, async () => {
        const k = key();
        assert.throws(() => new Isorun({ apiKey: k as string, apiUrl: url }), (e: unknown) => {
          assert.ok(e instanceof ApiKeyError, String(e));
          assert.match(e.message, message);
          assert.match(e.message, /isr_<region>_<keyId>_<secret>/);
          assert.ok(!e.message.includes(SECRET.slice(0, 20)));
          const liveSecret = live().split('_')[3] as string;
          assert.ok(!e.message.includes(liveSecret.slice(0, 20)));
          return true;
        });
        const options = k === undefined ? { apiUrl: url } : { apiKey: k, apiUrl: url };
        await assert.rejects(Sandbox.create(options), ApiKeyError);
        await assert.rejects(Sandbox.get('sbx_x', options), ApiKeyError);
      });
      assert.equal(requests, 0, 'a request went out');
    });
  }

  test('a well-formed key reaches the server (the counter counts)', async () => {
    const isorun = new Isorun({ apiKey: `isr_local_abc_${SECRET}`, apiUrl: url, maxRetries: 0 });
    await assert.rejects(isorun.usage());
    assert.equal(requests, 1);
    requests = 0;
  });
});

describe('the endpoint comes from the key', () => {
  test('local -> 127.0.0.1:8080; a region -> api.<region>.<ISORUN_DOMAIN>; overrides win', () => {
    withEnv({ ISORUN_API_URL: undefined, ISORUN_DOMAIN: undefined, ISORUN_PUBLIC_URL: undefined }, () => {
      const local = new Isorun({ apiKey: API_KEY() });
      assert.equal(local.apiUrl, 'http://127.0.0.1:8080');
      assert.equal(local.region, 'local');
      assert.equal(local.keyId, parseApiKey(API_KEY()).keyId);
      assert.equal(new Isorun({ apiKey: `isr_eu-west-1_abc_${SECRET}` }).apiUrl, 'https://api.eu-west-1.isorun.dev');
      withEnv({ ISORUN_DOMAIN: 'example.test' }, () => {
        assert.equal(new Isorun({ apiKey: `isr_us-east-2_abc_${SECRET}` }).apiUrl, 'https://api.us-east-2.example.test');
      });
      withEnv({ ISORUN_API_URL: 'http://127.0.0.1:9/' }, () => {
        assert.equal(new Isorun({ apiKey: `isr_eu-west-1_abc_${SECRET}` }).apiUrl, 'http://127.0.0.1:9');
        assert.equal(new Isorun({ apiKey: `isr_eu-west-1_abc_${SECRET}`, apiUrl: 'http://127.0.0.1:10' }).apiUrl, 'http://127.0.0.1:10');
      });
      assert.equal(apiUrlForRegion('ap-south-1', 'isorun.dev'), 'https://api.ap-south-1.isorun.dev');
      assert.ok(!JSON.stringify(local).includes(API_KEY().split('_')[3] as string));
    });
  });

  test('a key of another region is refused by this region: 401 KEY_WRONG_REGION', async () => {
    const { key } = newTenant('region', [], 'eu-test');
    const isorun = new Isorun({ apiKey: key, apiUrl: API_URL(), fetch: checkingFetch });
    assert.equal(isorun.region, 'eu-test');
    const error = await isorun.usage().catch((e: unknown) => e);
    assert.ok(error instanceof AuthenticationError, String(error));
    assert.equal(error.reason, 'KEY_WRONG_REGION');
  });
});

describe('errors', () => {
  test('a revoked key is AuthenticationError on the very next call', async () => {
    const { key } = newTenant('revoke');
    const isorun = new Isorun({ apiKey: key, apiUrl: API_URL(), fetch: checkingFetch });
    await isorun.usage();
    ctl('keys', 'revoke', parseApiKey(key).keyId);
    const error = await isorun.usage().catch((e: unknown) => e);
    assert.ok(error instanceof AuthenticationError, String(error));
    assert.equal(error.status, 401);
    assert.equal(error.code, 'UNAUTHENTICATED');
    assert.equal(error.reason, 'KEY_REVOKED');
    assert.match(error.message, /^401 KEY_REVOKED: /);
    assert.ok(error.message.includes(error.rawBody ?? '<none>'));
    assert.ok(!error.message.includes(key.split('_')[3] as string));
  });

  test('an unpinned image is InvalidArgumentError with the body in the message', async () => {
    const error = await Sandbox.create({ client: client(), image: 'busybox:latest' }).catch((e: unknown) => e);
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(error.reason, 'IMAGE_NOT_PINNED');
    assert.match(error.message, /^400 IMAGE_NOT_PINNED: /);
    assert.ok(error.body !== undefined && error.body.status === 400);
  });

  test('a long body is cut to its first 200 bytes in the message', async () => {
    // IMAGE_NOT_PINNED's body is over 200 bytes: the message must stop at byte 200.
    const error = await Sandbox.create({ client: client(), image: `busybox-with-a-long-name-${'x'.repeat(120)}` }).catch((e: unknown) => e);
    assert.ok(error instanceof Error);
    const raw = (error as { rawBody?: string }).rawBody ?? '';
    assert.ok(raw.length > 200, raw);
    assert.ok(error.message.includes(raw.slice(0, 200)));
    assert.ok(!error.message.includes(raw.slice(0, 201)));
  });

  test('nothing listening: ConnectionError with the URL, after the retries of a GET', async () => {
    const server = http.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const retries: RetryInfo[] = [];
    const isorun = new Isorun({
      apiKey: API_KEY(),
      apiUrl: `http://127.0.0.1:${port}`,
      maxRetries: 2,
      retryBaseDelayMs: 10,
      onRetry: (info) => retries.push(info),
    });
    const error = await isorun.usage().catch((e: unknown) => e);
    assert.ok(error instanceof ConnectionError, String(error));
    assert.equal(error.url, `http://127.0.0.1:${port}/v1/usage`);
    assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}/v1/usage`));
    assert.equal(retries.length, 2);
    // Hibernate is not safe to repeat after a lost answer: no retry.
    retries.length = 0;
    const sandbox = await Sandbox.create({ client: client() });
    made.push(sandbox);
    const elsewhere = await Sandbox.get(sandbox.id, { client: client() });
    Object.defineProperty(elsewhere, 'client', { value: isorun });
    await assert.rejects(elsewhere.hibernate(), ConnectionError);
    assert.equal(retries.length, 0);
  });
});

describe('rate limits', () => {
  test('a 429 RATE_LIMIT carries retryAfterSec, limit and the headers; retries wait and succeed', async () => {
    const { name, key } = newTenant('rate');
    const strict = new Isorun({ apiKey: key, apiUrl: API_URL(), maxRetries: 0, fetch: checkingFetch });
    await strict.usage();
    // Tiny limits, applied within 2 s: poll until a refusal shows.
    ctl('tenants', 'set-limits', name, '--requests-per-sec', '0.5');
    let refusal: unknown;
    assert.ok(
      await eventually(async () => {
        refusal = await strict.usage().then(() => undefined, (e: unknown) => e);
        return refusal instanceof RateLimitError;
      }, 8_000),
      `no 429 after set-limits: ${String(refusal)}`,
    );
    const error = refusal as RateLimitError;
    assert.equal(error.status, 429);
    assert.equal(error.reason, 'RATE_LIMIT');
    assert.match(error.message, /^429 RATE_LIMIT: /);
    assert.ok(error.retryAfterSec !== undefined && error.retryAfterSec >= 1, String(error.retryAfterSec));
    assert.ok(error.limit !== undefined);

    // The headers of a refusal, as API.md promises them.
    const raw = await fetch(`${API_URL()}/v1/usage`, { headers: { Authorization: `Bearer ${key}` } });
    assert.equal(raw.status, 429);
    assert.ok(Number(raw.headers.get('retry-after')) >= 1);
    assert.match(raw.headers.get('ratelimit') ?? '', /r=0/);
    assert.match(raw.headers.get('ratelimit-policy') ?? '', /q=\d+;w=\d+/);

    // The default client waits Retry-After and tries again: the call succeeds.
    const retries: RetryInfo[] = [];
    const patient = new Isorun({ apiKey: key, apiUrl: API_URL(), fetch: checkingFetch, onRetry: (i) => retries.push(i) });
    await sleep(2_100); // a full bucket: the first call passes, the second is refused
    await patient.usage();
    const started = Date.now();
    const usage = await patient.usage();
    assert.equal(typeof usage.activeSandboxes, 'number');
    assert.ok(retries.length >= 1, 'the second call was not refused and retried');
    const first = retries[0] as RetryInfo;
    assert.ok(first.error instanceof RateLimitError && first.error.reason === 'RATE_LIMIT');
    assert.ok(first.delayMs >= 1000 * (first.error.retryAfterSec ?? 1), `waited ${first.delayMs} ms`);
    assert.ok(Date.now() - started >= 1000);
  });

  test('CONCURRENT_SANDBOX_LIMIT is not retried by default, and is with retryConcurrentLimit', async () => {
    const { key } = newTenant('slots', ['--max-concurrent', '1']);
    const retries: RetryInfo[] = [];
    const isorun = new Isorun({ apiKey: key, apiUrl: API_URL(), fetch: checkingFetch, onRetry: (i) => retries.push(i) });
    const first = await Sandbox.create({ client: isorun });
    made.push(first);
    const error = await Sandbox.create({ client: isorun }).catch((e: unknown) => e);
    assert.ok(error instanceof RateLimitError, String(error));
    assert.equal(error.reason, 'CONCURRENT_SANDBOX_LIMIT');
    assert.equal(error.limit, 1);
    assert.equal(error.current, 1);
    assert.equal(retries.length, 0);

    const waiting = new Isorun({
      apiKey: key,
      apiUrl: API_URL(),
      fetch: checkingFetch,
      retryConcurrentLimit: true,
      maxRetries: 5,
      onRetry: (i) => retries.push(i),
    });
    const second = Sandbox.create({ client: waiting });
    await eventually(async () => retries.length > 0, 10_000);
    await first.destroy();
    const created = await second;
    made.push(created);
    assert.ok(retries.length >= 1);
    assert.equal(created.state, 'RUNNING');
  });
});
