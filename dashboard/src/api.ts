// The public API and the operator API as the dashboard uses them. Credentials live in
// sessionStorage only (gone when the tab closes) and travel in the Authorization header, never
// in a URL.

const KEY = 'isorun.apiKey';
const OPERATOR = 'isorun.operatorToken';

export type Role = 'tenant' | 'operator';

export function credential(role: Role): string | null {
  return sessionStorage.getItem(role === 'tenant' ? KEY : OPERATOR);
}
export function signIn(role: Role, secret: string): void {
  sessionStorage.setItem(role === 'tenant' ? KEY : OPERATOR, secret.trim());
}
export function signOut(): void {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(OPERATOR);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(role: Role, method: string, path: string, body?: unknown): Promise<T> {
  const secret = credential(role);
  const headers: Record<string, string> = {};
  if (secret) headers['Authorization'] = `Bearer ${secret}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: reported below
  }
  if (!res.ok) {
    const e = (json as { error?: { code?: string; reason?: string; message?: string } } | null)
      ?.error;
    throw new ApiError(res.status, e?.code ?? 'UNKNOWN', e?.reason ?? 'UNKNOWN',
                       e?.message ?? `${res.status} ${text.slice(0, 200)}`);
  }
  return json as T;
}

export interface Sandbox {
  id: string;
  state: string;
  image: string;
  imageDigest?: string;
  cpuMillis: number;
  memoryMb: number;
  timeoutSec: number;
  createdAt: string;
  expiresAt?: string;
  endedAt?: string;
  endReason?: string;
  endMessage?: string;
  metadata?: Record<string, string>;
  publicId?: string;
  urls?: Record<string, string>;
  // While STARTING: what the create waits for (PULLING with bytes, UNPACKING, STARTING).
  startProgress?: StartProgress;
}
export interface StartProgress {
  phase: string;
  pullBytesDone?: number;
  pullBytesTotal?: number;
}
export interface SandboxEvent {
  time: string;
  kind: string;
  state: string;
  reason?: string;
  message?: string;
}
export interface Usage {
  activeSandboxes: number;
  hibernatedSandboxes: number;
  limits: Record<string, number>;
}
export interface KeyInfo {
  keyId: string;
  name: string;
  role: string;
  region: string;
  createdAt: string;
  lastUsedAt?: string;
  revokedAt?: string;
}
export interface UsagePoint {
  time: string;
  activeMax: number;
  hibernatedMax: number;
  creates: number;
  refused: Record<string, number>;
}

export const tenant = {
  listSandboxes: (query = '') =>
    call<{ sandboxes: Sandbox[] }>('tenant', 'GET', `/v1/sandboxes${query}`),
  getSandbox: (id: string) => call<Sandbox>('tenant', 'GET', `/v1/sandboxes/${encodeURIComponent(id)}`),
  sandboxEvents: (id: string, pageToken = '') =>
    call<{ events: SandboxEvent[]; nextPageToken: string }>('tenant', 'GET',
      `/v1/sandboxes/${encodeURIComponent(id)}/events?pageSize=200` +
      (pageToken ? `&pageToken=${encodeURIComponent(pageToken)}` : '')),
  createSandbox: (body: Record<string, unknown>) =>
    call<Sandbox>('tenant', 'POST', '/v1/sandboxes', body),
  destroySandbox: (id: string) =>
    call<void>('tenant', 'DELETE', `/v1/sandboxes/${encodeURIComponent(id)}`),
  usage: () => call<Usage>('tenant', 'GET', '/v1/usage'),
  usageHistory: (from: Date, to: Date, stepSec: number) =>
    call<{ points: UsagePoint[] }>('tenant', 'GET',
      `/v1/usage/history?from=${from.toISOString()}&to=${to.toISOString()}&step=${stepSec}`),
  listKeys: () => call<{ keys: KeyInfo[] }>('tenant', 'GET', '/v1/keys'),
  createKey: (name: string, role: string) =>
    call<KeyInfo & { key: string }>('tenant', 'POST', '/v1/keys', { name, role }),
  revokeKey: (keyId: string) =>
    call<void>('tenant', 'DELETE', `/v1/keys/${encodeURIComponent(keyId)}`),
};

// exec:stream: calls `onLine` for each NDJSON object as it arrives.
export async function execStream(id: string, cmd: string,
                                 onLine: (line: Record<string, unknown>) => void,
                                 signal?: AbortSignal): Promise<void> {
  const res = await fetch(`/v1/sandboxes/${encodeURIComponent(id)}/exec:stream`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${credential('tenant') ?? ''}`,
               'Content-Type': 'application/json' },
    body: JSON.stringify({ cmd }),
    signal,
  });
  if (!res.ok || !res.body) {
    const text = await res.text();
    let message = `${res.status}`;
    try {
      message = JSON.parse(text).error.message;
    } catch {
      // keep the status
    }
    throw new ApiError(res.status, 'UNKNOWN', 'UNKNOWN', message);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim()) onLine(JSON.parse(line));
    }
  }
  if (buffered.trim()) onLine(JSON.parse(buffered));
}

export interface Resource { capacity: number; allocated: number; reserved?: number; free: number }
export interface RunnerInfo {
  id: string;
  name: string;
  region: string;
  state: string;
  draining: boolean;
  cpuMillis: Resource;
  memoryMb: Resource;
  sandboxes: Resource;
  placements: { warm: number; cold: number };
  imageCache: { images: { digest: string; refs?: string[] }[]; pulling: string[] };
}
export interface ResourceForecast {
  resource: string;
  outcome: string;
  capacity: number;
  allocated: number;
  slopePerHour: number;
  r2: number;
  points: number;
  secondsLeft?: number;
  exhaustsAt?: string;
}
export interface RegionForecast {
  firstResource?: string;
  secondsLeft?: number;
  exhaustsAt?: string;
  resources: ResourceForecast[];
}
export interface Capacity {
  generatedAt: string;
  totals: Record<string, unknown>;
  runners: RunnerInfo[];
  forecast: { method: string; fleet: RegionForecast | null; regions: Record<string, RegionForecast> } | null;
  // 429 CAPACITY since the scheduler started, by the region the creates asked for.
  capacityRefusals?: { total: number; regions: Record<string, number> };
}
export interface HistoryPoint {
  time: string;
  runners: Record<string, number>;
  cpuMillis: Resource;
  memoryMb: Resource;
  sandboxSlots: Resource;
  sandboxes: number;
  cachedImages: number;
  sandboxesByState?: Record<string, number>;
  placementsWarm: number;
  placementsCold: number;
  capacityRefusals: number;
  pulls: number;
}
export interface History {
  stepSec: number;
  fleet: HistoryPoint[];
  regions: Record<string, HistoryPoint[]>;
}

export const operator = {
  capacity: () => call<Capacity>('operator', 'GET', '/v1/admin/capacity'),
  history: (from: Date, to: Date, stepSec: number) =>
    call<History>('operator', 'GET',
      `/v1/admin/capacity/history?from=${from.toISOString()}&to=${to.toISOString()}&step=${stepSec}`),
  drain: (runner: string, drain: boolean) =>
    call<void>('operator', 'POST',
      `/v1/admin/runners/${encodeURIComponent(runner)}/${drain ? 'drain' : 'undrain'}`),
};
