// The tenant's views, signed in with an API key: sandboxes, one sandbox (with an exec console),
// usage against limits, and API keys.

import { ApiError, execStream, KeyInfo, Sandbox, SandboxEvent, tenant, UsagePoint } from './api';
import { chart, colors } from './charts';
import { ago, confirmDialog, h, say, table, until } from './dom';

function errorText(e: unknown): string {
  return e instanceof ApiError ? `${e.status} ${e.reason}: ${e.message}` : String(e);
}

function alert(e: unknown): HTMLElement {
  return h('p', { role: 'alert', class: 'error' }, errorText(e));
}

// ---- Sandboxes ----

export async function sandboxesView(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const filter = h('input', { id: 'metadata-filter', name: 'metadata', placeholder: 'app=web',
                              autocomplete: 'off' });
  const image = h('input', { id: 'create-image', name: 'image', value: 'busybox:1.36',
                             required: true });
  const progress = h('p', { role: 'status', class: 'progress', id: 'create-progress' });
  const list = h('div', { id: 'sandbox-list' });
  const createForm = h('form', { 'aria-label': 'Create a sandbox', class: 'inline' },
    h('label', { for: 'create-image' }, 'Image'), image,
    h('button', { type: 'submit' }, 'Create sandbox'), progress);
  createForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const started = Date.now();
    const wanted = image.value.trim();
    // A create answers once the sandbox runs, a cold image pull included. Meanwhile the sandbox
    // is listed as STARTING with what it waits for (startProgress, from its runner): show that.
    let asking = false;
    const tick = setInterval(async () => {
      if (asking) return;
      asking = true;
      try {
        const { sandboxes } = await tenant.listSandboxes('?state=PENDING,STARTING');
        const mine = sandboxes
          .filter((s) => s.image === wanted && Date.parse(s.createdAt) >= started - 5000)
          .pop();
        const secs = Math.round((Date.now() - started) / 1000);
        progress.textContent = mine?.startProgress
          ? `${progressText(mine)} (${secs}s)…`
          : `Starting (${secs}s)…`;
      } catch {
        // the create's own answer reports errors
      } finally {
        asking = false;
      }
    }, 500);
    progress.textContent = 'Starting…';
    try {
      const sb = await tenant.createSandbox({ image: image.value.trim() });
      progress.textContent = `Created ${sb.id} in ${((Date.now() - started) / 1000).toFixed(1)}s.`;
      await refresh();
    } catch (err) {
      progress.textContent = errorText(err);
    } finally {
      clearInterval(tick);
    }
  });
  const filterForm = h('form', { role: 'search', 'aria-label': 'Filter sandboxes', class: 'inline' },
    h('label', { for: 'metadata-filter' }, 'Metadata filter (key=value)'), filter,
    h('button', { type: 'submit' }, 'Filter'));
  filterForm.addEventListener('submit', (e) => {
    e.preventDefault();
    void refresh();
  });
  main.replaceChildren(h('h1', {}, 'Sandboxes'), createForm, filterForm, list);

  async function refresh() {
    let query = '';
    const f = filter.value.trim();
    if (f.includes('=')) {
      const [k, ...v] = f.split('=');
      query = `?metadata.${encodeURIComponent(k)}=${encodeURIComponent(v.join('='))}`;
    }
    try {
      const { sandboxes } = await tenant.listSandboxes(query);
      list.replaceChildren(sandboxTable(sandboxes));
    } catch (e) {
      list.replaceChildren(alert(e));
    }
  }
  await refresh();
  const timer = setInterval(() => void refresh(), 3000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

function sandboxTable(sandboxes: Sandbox[]): HTMLElement {
  if (sandboxes.length === 0) return h('p', {}, 'No live sandboxes.');
  return table('Live sandboxes', ['Sandbox', 'State', 'Image', 'Age', 'Expires in', 'Public URLs'],
    sandboxes.map((s) => [
      h('a', { href: `#/sandboxes/${s.id}` }, s.id),
      h('span', { class: `state state-${s.state.toLowerCase()}` }, s.state,
        s.startProgress ? h('span', { class: 'start-progress' }, ` ${progressText(s)}`) : ''),
      s.image,
      ago(s.createdAt),
      until(s.expiresAt),
      h('span', {}, Object.entries(s.urls ?? {}).map(([port, url]) =>
        h('a', { href: url, rel: 'noreferrer' }, `:${port} `))),
    ]), 'Sandboxes');
}

// ---- One sandbox ----

export async function sandboxView(main: HTMLElement, id: string, signal: AbortSignal):
    Promise<void> {
  const details = h('section', { 'aria-label': 'Details' });
  const output = h('pre', { role: 'log', 'aria-label': 'Console output', 'aria-live': 'polite',
                            class: 'console' });
  const cmd = h('input', { id: 'exec-cmd', name: 'cmd', autocomplete: 'off', required: true,
                           placeholder: 'echo hi' });
  const run = h('button', { type: 'submit' }, 'Run');
  const form = h('form', { 'aria-label': 'Exec console', class: 'inline' },
    h('label', { for: 'exec-cmd' }, 'Command'), cmd, run);
  let running: AbortController | null = null;
  signal.addEventListener('abort', () => running?.abort());
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const command = cmd.value;
    output.append(`$ ${command}\n`);
    running = new AbortController();
    run.disabled = true;
    try {
      await execStream(id, command, (line) => {
        if (typeof line.stdout === 'string') output.append(line.stdout);
        else if (typeof line.stderr === 'string') {
          output.append(h('span', { class: 'stderr' }, line.stderr));
        } else if (typeof line.exitCode === 'number') {
          output.append(h('span', { class: 'exit' }, `[exit ${line.exitCode}]\n`));
        } else if (line.error) {
          output.append(h('span', { class: 'stderr' },
            `[error ${(line.error as { message?: string }).message ?? ''}]\n`));
        }
        output.scrollTop = output.scrollHeight;
      }, running.signal);
    } catch (err) {
      output.append(h('span', { class: 'stderr' }, `[${errorText(err)}]\n`));
    } finally {
      run.disabled = false;
      running = null;
    }
  });
  const destroy = h('button', { type: 'button', class: 'danger' }, 'Destroy sandbox');
  destroy.addEventListener('click', async () => {
    if (!(await confirmDialog('Destroy sandbox?', `Sandbox ${id} and everything in it goes.`,
                              'Destroy'))) return;
    try {
      await tenant.destroySandbox(id);
      say(`Destroyed ${id}.`);
      await load();
    } catch (err) {
      say(errorText(err));
    }
  });
  main.replaceChildren(h('h1', {}, `Sandbox ${id}`), h('p', {}, h('a', { href: '#/sandboxes' },
    '← All sandboxes')), details, h('h2', {}, 'Exec console'), form, output, destroy);

  async function load() {
    try {
      const [sb, events] = await Promise.all([tenant.getSandbox(id), allEvents(id)]);
      details.replaceChildren(sandboxDetails(sb, events));
    } catch (e) {
      details.replaceChildren(alert(e));
    }
  }
  await load();
  const timer = setInterval(() => void load(), 5000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

// Every event of the sandbox (a few pages at most: a sandbox's life has a handful of steps per
// hibernation).
async function allEvents(id: string): Promise<SandboxEvent[]> {
  const out: SandboxEvent[] = [];
  let token = '';
  for (let page = 0; page < 10; ++page) {
    const { events, nextPageToken } = await tenant.sandboxEvents(id, token);
    out.push(...events);
    if (!nextPageToken) break;
    token = nextPageToken;
  }
  return out;
}

const eventWords: Record<string, string> = {
  CREATED: 'Created', PLACED: 'Placed on a runner', PULLING: 'Pulling the image',
  STARTED: 'Started', HIBERNATED: 'Hibernated', RESUMED: 'Resumed', DESTROYING: 'Destroying',
  ENDED: 'Ended',
};

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

// "Pulling the image: 12.0 MiB of 40.0 MiB (30%)", from a starting sandbox's progress.
export function progressText(s: Sandbox): string {
  const p = s.startProgress;
  if (!p) return '';
  if (p.phase === 'PULLING') {
    const done = p.pullBytesDone ?? 0;
    const total = p.pullBytesTotal ?? 0;
    if (total > 0) {
      return `Pulling the image: ${bytes(done)} of ${bytes(total)} ` +
             `(${Math.min(100, Math.floor((100 * done) / total))}%)`;
    }
    return done > 0 ? `Pulling the image: ${bytes(done)}` : 'Pulling the image';
  }
  if (p.phase === 'UNPACKING') return 'Unpacking the image';
  return 'Starting the container';
}

function sandboxDetails(s: Sandbox, events: SandboxEvent[]): HTMLElement {
  const rows: [string, string | Node][] = [
    ['State', h('span', { class: `state state-${s.state.toLowerCase()}` }, s.state)],
    ['Image', `${s.image}${s.imageDigest ? ` (${s.imageDigest.slice(0, 19)}…)` : ''}`],
    ['Size', `${s.cpuMillis} millicpu, ${s.memoryMb} MB`],
    ['Expires in', until(s.expiresAt)],
  ];
  if (s.startProgress) rows.push(['Progress', progressText(s)]);
  if (s.endReason) rows.push(['End reason', `${s.endReason}${s.endMessage ? `: ${s.endMessage}` : ''}`]);
  for (const [port, url] of Object.entries(s.urls ?? {})) rows.push([`Port ${port}`, url]);
  return h('div', {},
    h('dl', { class: 'details' }, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('h2', {}, 'Events'),
    h('ol', { class: 'timeline', 'aria-label': 'Events' },
      events.map((e) => h('li', { 'data-kind': e.kind },
        h('time', { datetime: e.time }, new Date(e.time).toLocaleString()),
        ` ${eventWords[e.kind] ?? e.kind}`,
        e.reason ? ` (${e.reason}${e.message ? `: ${e.message}` : ''})` : '',
        h('span', { class: 'state-after' }, ` → ${e.state}`)))));
}

// ---- Usage ----

export async function usageView(main: HTMLElement): Promise<void> {
  main.replaceChildren(h('h1', {}, 'Usage'), h('p', {}, 'Loading…'));
  try {
    const usage = await tenant.usage();
    const now = new Date();
    // The history is for admin keys; a sandbox key still sees its usage against limits.
    let hour: { points: UsagePoint[] } = { points: [] };
    let day: { points: UsagePoint[] } = { points: [] };
    let historyNote: HTMLElement | null = null;
    try {
      [hour, day] = await Promise.all([
        tenant.usageHistory(new Date(now.getTime() - 3600e3), now, 60),
        tenant.usageHistory(new Date(now.getTime() - 86400e3), now, 900),
      ]);
    } catch (e) {
      historyNote = h('p', { class: 'note' },
        e instanceof ApiError && e.status === 403 ? 'The usage history needs an admin key.'
                                                  : errorText(e));
    }
    const limits = usage.limits;
    const meter = (label: string, value: number, max: number) =>
      h('div', { class: 'meter-row' },
        h('span', {}, `${label}: ${value} of ${max}`),
        h('meter', { min: '0', max: String(max), value: String(value), 'aria-label': label }));
    const reasons = new Map<string, number>();
    for (const p of day.points) {
      for (const [r, n] of Object.entries(p.refused)) reasons.set(r, (reasons.get(r) ?? 0) + n);
    }
    main.replaceChildren(
      h('h1', {}, 'Usage'),
      h('section', { 'aria-label': 'Against limits' },
        meter('Running sandboxes', usage.activeSandboxes, limits.maxConcurrent ?? 0),
        meter('Hibernated sandboxes', usage.hibernatedSandboxes, limits.maxHibernated ?? 0),
        h('p', {}, `Creates per second: ${limits.createsPerSec ?? '—'}; requests per second: `,
          `${limits.requestsPerSec ?? '—'}; concurrent execs: ${limits.maxConcurrentExecs ?? '—'}.`)),
      historyNote ?? "",
      usageCharts('last hour', hour.points, limits.maxConcurrent ?? 0, now, 3600),
      usageCharts('last day', day.points, limits.maxConcurrent ?? 0, now, 86400),
      table('429s by reason, last day', ['Reason', 'Count'],
        [...reasons.entries()].map(([r, n]) => [r, String(n)]), '429s by reason'));
  } catch (e) {
    main.replaceChildren(h('h1', {}, 'Usage'), alert(e));
  }
}

function usageCharts(period: string, points: UsagePoint[], limit: number, now: Date,
                     spanSec: number): HTMLElement {
  const times = points.map((p) => Date.parse(p.time) / 1000);
  const range: [number, number] = [now.getTime() / 1000 - spanSec, now.getTime() / 1000];
  const reasons = [...new Set(points.flatMap((p) => Object.keys(p.refused)))].sort();
  return h('section', { 'aria-label': `Charts, ${period}` },
    h('h2', {}, `The ${period}`),
    chart(`Concurrent sandboxes, ${period}`, times, [
      { label: 'Running (max)', values: points.map((p) => p.activeMax), color: colors[0] },
      { label: 'Limit', values: points.map(() => limit), color: colors[1] },
    ], 'sandboxes', range),
    chart(`Creates and 429s, ${period}`, times, [
      { label: 'Creates', values: points.map((p) => p.creates), color: colors[2] },
      ...reasons.map((r, i) => ({ label: `429 ${r}`, values: points.map((p) => p.refused[r] ?? 0),
                                  color: colors[(i + 3) % colors.length] })),
    ], 'per step', range));
}

// ---- API keys ----

export async function keysView(main: HTMLElement): Promise<void> {
  const list = h('div', { id: 'key-list' });
  const name = h('input', { id: 'key-name', name: 'name', required: true, maxlength: '128' });
  const role = h('select', { id: 'key-role', name: 'role' },
    h('option', { value: 'sandbox' }, 'sandbox (sandboxes only)'),
    h('option', { value: 'admin' }, 'admin (may also manage keys)'));
  const secret = h('div', { id: 'new-key', 'aria-live': 'polite' });
  const form = h('form', { 'aria-label': 'Create an API key', class: 'inline' },
    h('label', { for: 'key-name' }, 'Name'), name,
    h('label', { for: 'key-role' }, 'Role'), role,
    h('button', { type: 'submit' }, 'Create key'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const made = await tenant.createKey(name.value.trim(), role.value);
      const field = h('input', { readonly: true, value: made.key, id: 'new-key-value',
                                 'aria-label': 'New API key', class: 'secret' });
      secret.replaceChildren(h('div', { role: 'region', 'aria-label': 'New key', class: 'callout' },
        h('p', {}, `Key "${made.name}" (${made.role}) created. Copy it now: it is shown only once.`),
        field,
        h('button', { type: 'button', onclick: () => {
          void navigator.clipboard?.writeText(made.key);
          say('Copied.');
        } }, 'Copy')));
      name.value = '';
      await refresh();
    } catch (err) {
      secret.replaceChildren(alert(err));
    }
  });
  main.replaceChildren(h('h1', {}, 'API keys'), form, secret, list);

  async function refresh() {
    try {
      const { keys } = await tenant.listKeys();
      list.replaceChildren(keyTable(keys, refresh));
    } catch (e) {
      list.replaceChildren(alert(e));
    }
  }
  await refresh();
}

function keyTable(keys: KeyInfo[], refresh: () => Promise<void>): HTMLElement {
  return table('Keys of this tenant', ['Name', 'Key id', 'Role', 'Created', 'Last used', 'Status', ''],
    keys.map((k) => {
      const revoke = h('button', { type: 'button', class: 'danger',
                                   'aria-label': `Revoke key ${k.name || k.keyId}` }, 'Revoke');
      revoke.addEventListener('click', async () => {
        if (!(await confirmDialog('Revoke key?',
            `Key ${k.name || k.keyId} stops working on its very next request.`, 'Revoke'))) return;
        try {
          await tenant.revokeKey(k.keyId);
          say(`Revoked ${k.keyId}.`);
        } catch (err) {
          say(errorText(err));
        }
        await refresh();
      });
      return [k.name, h('code', {}, k.keyId), k.role, ago(k.createdAt) + ' ago',
              k.lastUsedAt ? `${ago(k.lastUsedAt)} ago` : 'never',
              k.revokedAt ? `revoked ${ago(k.revokedAt)} ago` : 'active',
              k.revokedAt ? '' : revoke];
    }), 'API keys');
}
