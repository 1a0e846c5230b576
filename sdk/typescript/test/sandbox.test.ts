// Every Sandbox method against the live cluster (real runc sandboxes where the host can run
// them). Every answer is also checked against the OpenAPI document (support.ts).
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, describe, test } from 'node:test';

import {
  ExecTimeoutError,
  type ExecChunk,
  NotFoundError,
  Sandbox,
  SandboxNotRunningError,
  firstBytesForTest,
} from './exports.js';
import {
  assertNoViolations,
  checked,
  client,
  destroyMade,
  eventually,
  execUnavailable,
  made,
} from './support.js';

const isorun = client();
const noExec = execUnavailable();

async function create(options: Parameters<typeof Sandbox.create>[0] = {}): Promise<Sandbox> {
  const sandbox = await Sandbox.create({ client: isorun, ...options });
  made.push(sandbox);
  return sandbox;
}

// GET of a public URL. `<port>-<publicId>.localhost` names loopback, as browsers resolve it
// (RFC 6761); the system resolver here may not, so the connection goes to 127.0.0.1 and the
// URL's host is sent unchanged as Host, which is what the proxy routes by.
function getPublic(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const req = http.get(
      { host: '127.0.0.1', port: target.port, path: target.pathname, headers: { host: target.host } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}

after(async () => {
  await destroyMade();
  assertNoViolations();
});

describe('lifecycle', () => {
  test('create resolves a RUNNING sandbox with typed fields; get and refresh read it', async () => {
    const before = Date.now();
    const sandbox = await create({ metadata: { suite: 'lifecycle' }, timeoutSec: 120 });
    assert.match(sandbox.id, /^sbx_/);
    assert.equal(sandbox.state, 'RUNNING');
    assert.equal(sandbox.image, 'busybox:1.36');
    assert.equal(sandbox.timeoutSec, 120);
    assert.deepEqual(sandbox.metadata, { suite: 'lifecycle' });
    assert.ok(sandbox.createdAt instanceof Date);
    assert.ok(sandbox.expiresAt instanceof Date);
    assert.ok(sandbox.expiresAt.getTime() > before + 100_000);
    assert.match(sandbox.publicId, /^[A-Za-z0-9]{16,}$/);
    assert.equal(sandbox.network.egress, 'open');

    const read = await Sandbox.get(sandbox.id, { client: isorun });
    assert.equal(read.id, sandbox.id);
    assert.equal(read.imageDigest, sandbox.imageDigest);
    assert.equal((await sandbox.refresh()).state, 'RUNNING');
    assert.deepEqual(JSON.parse(JSON.stringify(read)).id, sandbox.id);
  });

  test('create passes sizing, env and the network profile', async () => {
    const sandbox = await create({
      cpuMillis: 500,
      memoryMb: 128,
      env: { GREETING: 'from-create' },
      network: { egress: 'none' },
    });
    assert.equal(sandbox.cpuMillis, 500);
    assert.equal(sandbox.memoryMb, 128);
    assert.equal(sandbox.network.egress, 'none');
    if (!noExec) assert.equal((await sandbox.exec('echo $GREETING')).stdout, 'from-create\n');
  });

  test('without a client, calls use a default one from ISORUN_API_KEY and ISORUN_API_URL', async () => {
    const sandbox = await Sandbox.create({ timeoutSec: 60 });
    made.push(sandbox);
    assert.equal(sandbox.client.apiUrl, process.env['ISORUN_API_URL']);
    assert.equal((await Sandbox.get(sandbox.id)).id, sandbox.id);
    assert.equal(sandbox.client, (await Sandbox.get(sandbox.id)).client);
  });

  test('create with an idempotency key answers the same sandbox twice', async () => {
    const key = `tour-${Date.now()}-${Math.random()}`;
    const a = await create({ idempotencyKey: key });
    const b = await create({ idempotencyKey: key });
    assert.equal(b.id, a.id);
  });

  test('setTimeout moves the deadline to now + seconds', async () => {
    const sandbox = await create({ timeoutSec: 60 });
    const before = Date.now();
    await sandbox.setTimeout(3600);
    assert.equal(sandbox.timeoutSec, 3600);
    const expires = sandbox.expiresAt?.getTime() ?? 0;
    assert.ok(expires >= before + 3_590_000 && expires <= Date.now() + 3_600_000 + 2_000, `expiresAt ${sandbox.expiresAt?.toISOString()}`);
    await sandbox.refresh();
    assert.equal(sandbox.timeoutSec, 3600);
  });

  test('hibernate and resume keep the files; exec while hibernated is SandboxNotRunningError', { skip: noExec || false }, async () => {
    const sandbox = await create();
    await sandbox.exec('echo kept > /tmp/state');
    await sandbox.hibernate();
    assert.equal(sandbox.state, 'HIBERNATED');
    assert.equal(sandbox.expiresAt, null);
    const refused = await sandbox.exec('true').catch((e: unknown) => e);
    assert.ok(refused instanceof SandboxNotRunningError, String(refused));
    assert.equal(refused.status, 409);
    assert.equal(refused.reason, 'SANDBOX_NOT_RUNNING');
    assert.match(refused.message, /^409 /);
    await sandbox.resume();
    assert.equal(sandbox.state, 'RUNNING');
    assert.equal((await sandbox.exec('cat /tmp/state')).stdout, 'kept\n');
  });

  test('connect resumes a hibernated sandbox', async () => {
    const sandbox = await create();
    await sandbox.hibernate();
    const connected = await Sandbox.connect(sandbox.id, { client: isorun });
    assert.equal(connected.state, 'RUNNING');
    assert.equal((await sandbox.refresh()).state, 'RUNNING');
  });

  test('destroy frees the sandbox; get still reads it ended; destroying again is fine', async () => {
    const sandbox = await Sandbox.create({ client: isorun });
    await sandbox.destroy();
    const ended = await Sandbox.get(sandbox.id, { client: isorun });
    assert.equal(ended.state, 'DESTROYED');
    assert.equal(ended.endReason, 'DELETED');
    assert.ok(ended.endedAt instanceof Date);
    await sandbox.destroy();
  });

  test('an unknown id is NotFoundError', async () => {
    const error = await Sandbox.get('sbx_doesnotexist0000', { client: isorun }).catch((e: unknown) => e);
    assert.ok(error instanceof NotFoundError, String(error));
    assert.equal(error.status, 404);
    assert.match(error.message, /^404 NOT_FOUND: /);
    assert.ok(error.requestId !== undefined && error.requestId.length > 0);
  });

  test('list walks every page', async () => {
    const suite = `pages-${Date.now()}`;
    const sandboxes = await Promise.all([1, 2, 3, 4, 5].map(() => create({ metadata: { suite } })));
    const pager = Sandbox.list({ client: isorun, metadata: { suite }, pageSize: 2 });
    const pages: string[][] = [];
    for await (const page of pager.pages()) pages.push(page.map((s) => s.id));
    assert.deepEqual(pages.map((p) => p.length), [2, 2, 1]);
    const listed: string[] = [];
    for await (const sandbox of Sandbox.list({ client: isorun, metadata: { suite }, pageSize: 2 })) {
      assert.equal(sandbox.metadata['suite'], suite);
      listed.push(sandbox.id);
    }
    assert.deepEqual(listed.sort(), sandboxes.map((s) => s.id).sort());
    assert.deepEqual(pages.flat().sort(), listed);
    // State filters: the five are RUNNING, none DESTROYED yet.
    assert.equal((await Sandbox.list({ client: isorun, metadata: { suite }, state: 'DESTROYED' }).toArray()).length, 0);
    assert.equal((await Sandbox.list({ client: isorun, metadata: { suite }, state: ['RUNNING', 'HIBERNATED'] }).toArray()).length, 5);
  });

  test('usage counts the tenant\'s sandboxes and says its limits', async () => {
    await create();
    const usage = await isorun.usage();
    assert.ok(usage.activeSandboxes >= 1);
    assert.equal(usage.limits.maxConcurrent, 50);
  });

  test('url(port) is the public URL of a port', async () => {
    const sandbox = await create();
    const local = await Sandbox.get(sandbox.id, {
      client: client({ publicUrl: 'http://127.0.0.1:8081' }),
    });
    assert.equal(local.url(3000), `http://3000-${sandbox.publicId}.localhost:8081/`);
    const regional = await Sandbox.get(sandbox.id, { client: client({ publicUrl: 'https://eu-west-1.isorun.dev' }) });
    assert.equal(regional.url(8080), `https://8080-${sandbox.publicId}.eu-west-1.isorun.dev/`);
    assert.throws(() => sandbox.url(0), /port must be 1-65535/);
  });
});

describe('exec', { skip: noExec || false }, () => {
  test('exec(cmd) resolves exit code, output and duration; a failing command is a result', async () => {
    const sandbox = await create();
    const ok = await sandbox.exec('echo out; echo err >&2');
    assert.deepEqual({ exitCode: ok.exitCode, stdout: ok.stdout, stderr: ok.stderr }, { exitCode: 0, stdout: 'out\n', stderr: 'err\n' });
    assert.ok(ok.durationMs >= 0);
    const failed = await sandbox.exec('exit 7');
    assert.equal(failed.exitCode, 7);
  });

  test('exec(cmd, {env, cwd, stdin, timeoutSec})', async () => {
    const sandbox = await create();
    const r = await sandbox.exec('echo "$GREETING from $(pwd)"; cat', {
      env: { GREETING: 'hello' },
      cwd: '/tmp',
      stdin: 'piped in',
      timeoutSec: 10,
    });
    assert.equal(r.stdout, 'hello from /tmp\npiped in');
  });

  test('exec(cmd, timeoutSec) past its timeout is a 504 ExecTimeoutError with the body in its message', async () => {
    const sandbox = await create();
    const started = Date.now();
    const error = await sandbox.exec('sleep 30', 1).catch((e: unknown) => e);
    assert.ok(error instanceof ExecTimeoutError, String(error));
    assert.ok(Date.now() - started < 25_000, 'the command was not killed at its timeout');
    assert.equal(error.status, 504);
    assert.equal(error.reason, 'EXEC_TIMEOUT');
    assert.equal(error.code, 'DEADLINE_EXCEEDED');
    assert.match(error.message, /^504 EXEC_TIMEOUT: /);
    assert.ok(error.rawBody !== undefined && error.rawBody.length > 0);
    assert.ok(error.message.includes(firstBytesForTest(error.rawBody, 200)), error.message);
    assert.match(error.message, /execStream/);
    // The sandbox lives on, and the command is gone.
    const ps = await sandbox.exec('ps');
    assert.ok(!ps.stdout.includes('sleep 30'), ps.stdout);
  });

  test('execStream calls back while the command runs, and resolves the result', async () => {
    const sandbox = await create();
    const seen: string[] = [];
    let released = false;
    // The command waits for a file that only the callback creates: it can end only if the
    // callback fired while it was still running.
    const result = await sandbox.execStream(
      'echo ready; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo done; echo warn >&2; exit 3',
      {
        timeoutSec: 20,
        onStdout: (text) => {
          seen.push(text);
          if (!released && text.includes('ready')) {
            released = true;
            void sandbox.exec('touch /tmp/go');
          }
        },
        onStderr: (text) => seen.push(`err:${text}`),
      },
    );
    assert.equal(result.exitCode, 3);
    assert.equal(result.stdout, 'ready\ndone\n');
    assert.equal(result.stderr, 'warn\n');
    assert.ok(seen.join('').includes('ready'));
    assert.ok(seen.includes('err:warn\n'));
  });

  test('execStream is an async iterable of chunks', async () => {
    const sandbox = await create();
    const stream = sandbox.execStream('echo one; while [ ! -f /tmp/go2 ]; do sleep 0.05; done; echo two >&2', { timeoutSec: 20 });
    const chunks: ExecChunk[] = [];
    for await (const chunk of stream) {
      chunks.push(chunk);
      if ('stdout' in chunk && chunk.stdout.includes('one')) await sandbox.exec('touch /tmp/go2');
    }
    assert.deepEqual(chunks, [{ stdout: 'one\n' }, { stderr: 'two\n' }]);
    assert.equal((await stream).exitCode, 0);
  });

  test('aborting execStream ends the stream and kills the command', async () => {
    const sandbox = await create();
    const controller = new AbortController();
    const stream = sandbox.execStream('echo started; sleep 271', {
      signal: controller.signal,
      onStdout: () => controller.abort(),
    });
    const error = await stream.then(() => undefined, (e: unknown) => e);
    assert.ok(error instanceof Error && error.name === 'AbortError', String(error));
    const gone = await eventually(async () => !(await sandbox.exec('ps')).stdout.includes('sleep 271'));
    assert.ok(gone, 'sleep 271 still runs after the abort');
  });

  test('url(port) reaches a server in the sandbox through the public-URL proxy', async () => {
    const sandbox = await create();
    // busybox httpd on the sandbox's loopback only: the proxy reaches it from inside.
    await sandbox.exec('mkdir -p /www && echo "hello through the proxy" > /www/index.html && httpd -p 127.0.0.1:3000 -h /www');
    const url = sandbox.url(3000);
    assert.match(url, new RegExp(`^http://3000-${sandbox.publicId}\\.localhost:\\d+/$`));
    let got = { status: 0, body: '' };
    const reached = await eventually(async () => {
      got = await getPublic(url);
      return got.status === 200;
    });
    assert.ok(reached, `GET ${url}: ${got.status} ${got.body}`);
    assert.equal(got.body, 'hello through the proxy\n');
    // The sandbox object lists the port now, with the same URL.
    await sandbox.refresh();
    assert.equal(`${sandbox.urls['3000']}/`, url);
    assert.equal(sandbox.url(3000), url);
    // A port nothing listens on is the proxy's 502 naming the port.
    const closed = await getPublic(sandbox.url(3001));
    assert.equal(closed.status, 502);
    assert.match(closed.body, /port 3001/);
  });

  test('execStream of a hibernated sandbox is SandboxNotRunningError', async () => {
    const sandbox = await create();
    await sandbox.hibernate();
    const error = await sandbox.execStream('true').then(() => undefined, (e: unknown) => e);
    assert.ok(error instanceof SandboxNotRunningError, String(error));
  });
});

test('every operation these suites use answered as the document says', { skip: noExec ? 'exec operations need real sandboxes' : false }, () => {
  const operations = new Set(checked.map((c) => c.operation));
  for (const op of [
    'createSandbox', 'listSandboxes', 'getSandbox', 'destroySandbox', 'setSandboxTimeout',
    'hibernateSandbox', 'resumeSandbox', 'execInSandbox', 'execStreamInSandbox', 'getUsage',
  ]) {
    assert.ok(operations.has(op), `no answer of ${op} was checked`);
  }
});
