/**
 * The client: configuration (key, endpoint, retries) and the one place that sends requests.
 * `Sandbox` methods go through an `Isorun` object; without one they use a default client made
 * from the environment (`ISORUN_API_KEY`, `ISORUN_API_URL`, `ISORUN_DOMAIN`).
 */
import {
  apiUrlForRegion,
  DEFAULT_DOMAIN,
  normalizeBaseUrl,
  parseApiKey,
  publicUrlForRegion,
} from './config.js';
import {
  ConfigurationError,
  ConnectionError,
  errorFromResponse,
  IsorunError,
  RateLimitError,
  ServiceUnavailableError,
} from './errors.js';
import type { Usage } from './types.js';

export const SDK_VERSION = '0.1.0';

/** Told before each retry, e.g. for logging. */
export interface RetryInfo {
  /** 1 for the first retry. */
  attempt: number;
  /** How long the SDK waits before it. */
  delayMs: number;
  /** What failed. */
  error: IsorunError;
  method: string;
  path: string;
}

export interface IsorunOptions {
  /** `isr_<region>_<keyId>_<secret>`; default `ISORUN_API_KEY`. */
  apiKey?: string;
  /** Overrides the endpoint derived from the key's region; default `ISORUN_API_URL`. */
  apiUrl?: string;
  /** Base of public URLs (`sandbox.url(port)`); default `ISORUN_PUBLIC_URL`, else from the region. */
  publicUrl?: string;
  /** Retries of a call that failed in a retryable way (default 3; 0 turns retries off). */
  maxRetries?: number;
  /** No retry starts whose wait would end later than this after the call began (default 60 s). */
  retryDeadlineMs?: number;
  /** First backoff step; each retry doubles it, with full jitter (default 500 ms). */
  retryBaseDelayMs?: number;
  /** Longest backoff step without a Retry-After (default 8 s). */
  retryMaxDelayMs?: number;
  /** Also retry 429 `CONCURRENT_SANDBOX_LIMIT` (default false: only a destroy frees a slot). */
  retryConcurrentLimit?: boolean;
  /** Also retry exec and execStream like safe calls (default false: a command may have run). */
  retryExec?: boolean;
  /** Called before each retry. */
  onRetry?: (info: RetryInfo) => void;
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch;
}

/** How a call may be repeated. */
export type CallKind =
  /** GET, DELETE, create with its idempotency key, resume, setTimeout: repeating changes nothing more. */
  | 'idempotent'
  /** May act twice if repeated after the server got it (hibernate): only refusals are retried. */
  | 'unsafe'
  /** Runs a command: never retried unless `retryExec`. */
  | 'exec';

export interface CallSpec {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  query?: URLSearchParams;
  body?: unknown;
  headers?: Record<string, string>;
  kind: CallKind;
  signal?: AbortSignal | undefined;
}

/** A successful answer. */
export interface Answer {
  status: number;
  headers: Headers;
  response: Response;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

function isAbort(error: unknown, signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true || (error instanceof Error && error.name === 'AbortError');
}

/** A client of one Isorun region. */
export class Isorun {
  /** The endpoint every call goes to (`http://127.0.0.1:8080`, `https://api.<region>.isorun.dev`). */
  readonly apiUrl: string;
  /** Base of the public URLs of sandboxes. */
  readonly publicUrl: string;
  /** The key's region segment. */
  readonly region: string;
  /** The key's id (safe to log; the secret is never exposed). */
  readonly keyId: string;
  readonly maxRetries: number;
  readonly retryDeadlineMs: number;
  readonly #apiKey: string;
  readonly #options: IsorunOptions;
  readonly #fetch: typeof fetch;

  /** Checks the key's shape (throws {@link ApiKeyError} before any request) and the endpoint. */
  constructor(options: IsorunOptions = {}) {
    const env = typeof process === 'undefined' ? {} : process.env;
    const key = options.apiKey ?? env['ISORUN_API_KEY'];
    const parsed = parseApiKey(key);
    this.#apiKey = (key as string).trim();
    this.region = parsed.region;
    this.keyId = parsed.keyId;
    const domain = env['ISORUN_DOMAIN'] || DEFAULT_DOMAIN;
    const explicitUrl = options.apiUrl ?? (env['ISORUN_API_URL'] || undefined);
    this.apiUrl =
      explicitUrl !== undefined
        ? normalizeBaseUrl(explicitUrl, options.apiUrl !== undefined ? 'apiUrl' : 'ISORUN_API_URL')
        : apiUrlForRegion(parsed.region, domain);
    const explicitPublic = options.publicUrl ?? (env['ISORUN_PUBLIC_URL'] || undefined);
    this.publicUrl =
      explicitPublic !== undefined
        ? normalizeBaseUrl(explicitPublic, 'publicUrl')
        : publicUrlForRegion(parsed.region, domain);
    const maxRetries = options.maxRetries ?? 3;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new ConfigurationError(`maxRetries must be a whole number >= 0, not ${maxRetries}`, {
        status: 0,
        code: 'CLIENT',
        reason: 'INVALID_OPTION',
      });
    }
    this.maxRetries = maxRetries;
    this.retryDeadlineMs = options.retryDeadlineMs ?? 60_000;
    this.#options = options;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== 'function') {
      throw new ConfigurationError('no fetch: use Node.js 18 or newer, or pass options.fetch', {
        status: 0,
        code: 'CLIENT',
        reason: 'NO_FETCH',
      });
    }
    this.#fetch = f;
  }

  /** The tenant's active and hibernated sandboxes and its limits. */
  async usage(options: { signal?: AbortSignal } = {}): Promise<Usage> {
    const answer = await this.call({
      method: 'GET',
      path: '/v1/usage',
      kind: 'idempotent',
      signal: options.signal,
    });
    return (await answer.response.json()) as Usage;
  }

  /** Never shows the key. */
  toJSON(): Record<string, string> {
    return { apiUrl: this.apiUrl, region: this.region, keyId: this.keyId };
  }

  /**
   * Sends one call, retrying what is safe to retry; resolves a 2xx answer whose body is unread,
   * throws an {@link IsorunError} otherwise. For the SDK's classes; usable for routes the SDK
   * does not wrap yet.
   */
  async call(spec: CallSpec): Promise<Answer> {
    const started = Date.now();
    const url = `${this.apiUrl}${spec.path}${spec.query && [...spec.query].length > 0 ? `?${spec.query}` : ''}`;
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.#apiKey}`,
      Accept: 'application/json',
      'User-Agent': `isorun-sdk-typescript/${SDK_VERSION}`,
      ...spec.headers,
    };
    let body: string | undefined;
    if (spec.body !== undefined) {
      body = JSON.stringify(spec.body);
      headers['Content-Type'] = 'application/json';
    }
    for (let attempt = 0; ; attempt++) {
      let error: IsorunError;
      let retryAfterMs: number | undefined;
      try {
        const response = await this.#fetch(url, {
          method: spec.method,
          headers,
          body,
          signal: spec.signal,
        });
        if (response.ok) return { status: response.status, headers: response.headers, response };
        const text = await response.text();
        error = errorFromResponse({
          status: response.status,
          text,
          method: spec.method,
          url,
          requestId: response.headers.get('x-request-id') ?? undefined,
          retryAfterHeader: response.headers.get('retry-after'),
        });
        const header = Number.parseInt(response.headers.get('retry-after') ?? '', 10);
        if (Number.isFinite(header) && header >= 0) retryAfterMs = header * 1000;
      } catch (e) {
        if (isAbort(e, spec.signal)) throw e;
        if (e instanceof IsorunError) throw e;
        error = new ConnectionError(
          `could not reach ${url}: ${describeNetworkError(e)} (${spec.method} ${spec.path})`,
          { status: 0, code: 'UNAVAILABLE', reason: 'CONNECTION_FAILED', method: spec.method, url, cause: e },
        );
      }
      if (attempt >= this.maxRetries || !this.#retryable(error, spec.kind)) throw error;
      const delayMs = this.#backoff(attempt, retryAfterMs);
      if (Date.now() + delayMs - started > this.retryDeadlineMs) throw error;
      this.#options.onRetry?.({ attempt: attempt + 1, delayMs, error, method: spec.method, path: spec.path });
      await sleep(delayMs, spec.signal);
    }
  }

  /** Whether `error` of a call of `kind` may be retried. */
  #retryable(error: IsorunError, kind: CallKind): boolean {
    if (kind === 'exec' && this.#options.retryExec !== true) return false;
    const safe = kind !== 'unsafe';
    if (error instanceof RateLimitError) {
      // A 429 refused the call before it did anything; which limits clear by waiting differs.
      switch (error.reason) {
        case 'RATE_LIMIT':
          return true;
        case 'CAPACITY':
          return safe;
        case 'CONCURRENT_SANDBOX_LIMIT':
          return safe && this.#options.retryConcurrentLimit === true;
        default:
          return false;
      }
    }
    if (error instanceof ServiceUnavailableError || error instanceof ConnectionError) return safe;
    return false;
  }

  /** Exponential backoff with full jitter; never shorter than the server's Retry-After. */
  #backoff(attempt: number, retryAfterMs: number | undefined): number {
    const base = this.#options.retryBaseDelayMs ?? 500;
    const cap = this.#options.retryMaxDelayMs ?? 8_000;
    const step = Math.min(cap, base * 2 ** attempt);
    const jitter = Math.random() * step;
    if (retryAfterMs !== undefined) {
      // Waiting exactly Retry-After would send every client back at once: spread them a little.
      return retryAfterMs + Math.random() * Math.min(step, 1_000);
    }
    return jitter;
  }
}

function describeNetworkError(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    if (cause instanceof Error) {
      const code = (cause as { code?: unknown }).code;
      return typeof code === 'string' ? `${code} (${cause.message})` : cause.message;
    }
    return e.message;
  }
  return String(e);
}

let defaultClient: Isorun | undefined;

/** The client `Sandbox` uses when a call names none: made from the environment on first use. */
export function defaultIsorun(): Isorun {
  defaultClient ??= new Isorun();
  return defaultClient;
}

/** Options that pick a client: an `Isorun`, or a key and endpoint for a new one. */
export interface ClientChoice {
  client?: Isorun;
  apiKey?: string;
  apiUrl?: string;
}

export function clientFor(choice: ClientChoice | undefined): Isorun {
  if (choice?.client !== undefined) return choice.client;
  if (choice?.apiKey !== undefined || choice?.apiUrl !== undefined) {
    const options: IsorunOptions = {};
    if (choice.apiKey !== undefined) options.apiKey = choice.apiKey;
    if (choice.apiUrl !== undefined) options.apiUrl = choice.apiUrl;
    return new Isorun(options);
  }
  return defaultIsorun();
}
