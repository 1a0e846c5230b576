/** A sandbox: its fields as typed properties, and what can be done with it. */
import { randomUUID } from 'node:crypto';

import { type ClientChoice, clientFor, type Isorun } from './client.js';
import { ConfigurationError } from './errors.js';
import { execBody, type ExecOptions, ExecStream, type ExecStreamOptions } from './stream.js';
import type {
  EndReason,
  ExecResult,
  NetworkProfile,
  SandboxData,
  SandboxListData,
  SandboxState,
} from './types.js';

/** The image a create uses when none is given: the test image every local cluster has. */
export const DEFAULT_LOCAL_IMAGE = 'busybox:1.36';

export interface CreateSandboxOptions extends ClientChoice {
  /**
   * Pinned image (`name:tag`, not `latest`/`lts`, or `name@sha256:...`). Required, except on a
   * local cluster (key region `local`), where it defaults to `busybox:1.36`.
   */
  image?: string;
  /** Idle timeout in seconds, 1-86400 (default 300). */
  timeoutSec?: number;
  cpuMillis?: number;
  memoryMb?: number;
  diskMb?: number;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  network?: NetworkProfile;
  /** Makes repeats of this create answer the same sandbox; default: a new one per call. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface ConnectOptions extends ClientChoice {
  signal?: AbortSignal;
}

export interface ListSandboxesOptions extends ClientChoice {
  /** One state or several (default: the live ones). */
  state?: SandboxState | SandboxState[];
  /** Only sandboxes whose metadata has all of these entries. */
  metadata?: Record<string, string>;
  /** Sandboxes per request, 1-1000 (default 50). */
  pageSize?: number;
  signal?: AbortSignal;
}

export interface CallOptions {
  signal?: AbortSignal;
}

function parseTime(value: string | null | undefined): Date | null {
  return value === null || value === undefined ? null : new Date(value);
}

function randomKey(): string {
  return `sdk-${randomUUID()}`; // node:crypto: Node 18 has no global crypto
}

export class Sandbox {
  readonly id: string;
  state!: SandboxState;
  image!: string;
  /** Manifest digest the image's tag resolved to. */
  imageDigest!: string;
  cpuMillis!: number;
  memoryMb!: number;
  diskMb: number | undefined;
  /** Idle timeout in seconds. */
  timeoutSec!: number;
  createdAt!: Date | null;
  /** When the idle timer fires; null while hibernated or ended. */
  expiresAt!: Date | null;
  endedAt!: Date | null;
  endReason: EndReason | undefined;
  endMessage: string | undefined;
  metadata!: Record<string, string>;
  network!: NetworkProfile;
  /** The 128-bit credential in the sandbox's public URLs. */
  publicId!: string;
  /** Listening port -> public URL, as the API last said. */
  urls!: Record<string, string>;
  /** The client this sandbox's calls go through. */
  readonly client: Isorun;

  private constructor(client: Isorun, data: SandboxData) {
    this.client = client;
    this.id = data.id;
    this.#apply(data);
  }

  /** Creates a sandbox and resolves once it is RUNNING. */
  static async create(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const client = clientFor(options);
    let image = options.image;
    if (image === undefined) {
      if (client.region !== 'local') {
        throw new ConfigurationError(
          'Sandbox.create needs an image (e.g. {image: "python:3.12"}); only a local cluster ' +
            `defaults to ${DEFAULT_LOCAL_IMAGE}`,
          { status: 0, code: 'CLIENT', reason: 'IMAGE_REQUIRED' },
        );
      }
      image = DEFAULT_LOCAL_IMAGE;
    }
    const body: Record<string, unknown> = { image };
    for (const field of ['timeoutSec', 'cpuMillis', 'memoryMb', 'diskMb', 'env', 'metadata', 'network'] as const) {
      if (options[field] !== undefined) body[field] = options[field];
    }
    const answer = await client.call({
      method: 'POST',
      path: '/v1/sandboxes',
      body,
      // One key per create call: the SDK's own retries of it can never start two sandboxes.
      headers: { 'Idempotency-Key': options.idempotencyKey ?? randomKey() },
      kind: 'idempotent',
      signal: options.signal,
    });
    return new Sandbox(client, (await answer.response.json()) as SandboxData);
  }

  /** Reads a sandbox (any state, ended ones included). */
  static async get(id: string, options: ConnectOptions = {}): Promise<Sandbox> {
    const client = clientFor(options);
    return new Sandbox(client, await Sandbox.#read(client, id, options.signal));
  }

  /** A sandbox ready to use: reads it, and resumes it when it is hibernated. */
  static async connect(id: string, options: ConnectOptions = {}): Promise<Sandbox> {
    const sandbox = await Sandbox.get(id, options);
    if (sandbox.state === 'HIBERNATED') await sandbox.resume(options);
    return sandbox;
  }

  /** Every sandbox that matches, page after page (`for await`), or `.toArray()`. */
  static list(options: ListSandboxesOptions = {}): SandboxPages {
    return new SandboxPages(clientFor(options), options);
  }

  /**
   * Runs `cmd` with `/bin/sh -c` and resolves what it left (a non-zero exit code is a result).
   * `timeoutSec` defaults to 30; past it the command is killed: {@link ExecTimeoutError}.
   */
  exec(cmd: string, timeoutSec?: number): Promise<ExecResult>;
  exec(cmd: string, options?: ExecOptions): Promise<ExecResult>;
  async exec(cmd: string, options?: number | ExecOptions): Promise<ExecResult> {
    const opts: ExecOptions = typeof options === 'number' ? { timeoutSec: options } : (options ?? {});
    const answer = await this.client.call({
      method: 'POST',
      path: `${this.#path}/exec`,
      body: execBody(cmd, opts),
      kind: 'exec',
      signal: opts.signal,
    });
    return (await answer.response.json()) as ExecResult;
  }

  /**
   * Runs `cmd` and streams its output: `onStdout`/`onStderr` fire as it arrives, `for await`
   * yields `{stdout}`/`{stderr}` chunks, and `await` resolves the result when it ends. No
   * timeout unless given; aborting `signal` kills the command.
   */
  execStream(cmd: string, options: ExecStreamOptions = {}): ExecStream {
    return new ExecStream(this.client, this.id, cmd, options);
  }

  /** Sets the idle timeout: the sandbox ends `seconds` from now unless something happens. */
  async setTimeout(seconds: number, options: CallOptions = {}): Promise<this> {
    return this.#post('/timeout', { timeoutSec: seconds }, 'idempotent', options);
  }

  /** Freezes every process; the sandbox stops counting against the concurrent limit. */
  async hibernate(options: CallOptions = {}): Promise<this> {
    return this.#post('/hibernate', undefined, 'unsafe', options);
  }

  /** Resumes a hibernated sandbox (admitted like a create: may throw RateLimitError). */
  async resume(options: CallOptions = {}): Promise<this> {
    return this.#post('/resume', undefined, 'idempotent', options);
  }

  /** Destroys the sandbox; its slot is free when this resolves. Destroying twice is fine. */
  async destroy(options: CallOptions = {}): Promise<void> {
    await this.client.call({ method: 'DELETE', path: this.#path, kind: 'idempotent', signal: options.signal });
    this.state = 'DESTROYED';
  }

  /** Reads the sandbox again and updates these fields. */
  async refresh(options: CallOptions = {}): Promise<this> {
    this.#apply(await Sandbox.#read(this.client, this.id, options.signal));
    return this;
  }

  /**
   * The public URL of `port`: `https://<port>-<publicId>.<publicDomain>/` (locally
   * `http://<port>-<publicId>.localhost:8081/`). No key is needed to use it.
   */
  url(port: number): string {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new ConfigurationError(`port must be 1-65535, not ${port}`, {
        status: 0,
        code: 'CLIENT',
        reason: 'INVALID_PORT',
      });
    }
    const known = this.urls[String(port)];
    // The API lists origins ("http://3000-<id>.localhost:8081"): the same URL either way.
    if (known !== undefined) return known.endsWith('/') ? known : `${known}/`;
    const base = new URL(this.client.publicUrl);
    // The proxy routes by host name; an address or localhost means the local proxy's domain.
    const host = /^[\d.]+$|^\[|^localhost$/.test(base.hostname) ? 'localhost' : base.hostname;
    const portPart = base.port === '' ? '' : `:${base.port}`;
    return `${base.protocol}//${port}-${this.publicId}.${host}${portPart}/`;
  }

  /** The sandbox's fields as the API sends them. */
  toJSON(): SandboxData {
    const data: SandboxData = {
      id: this.id,
      state: this.state,
      image: this.image,
      imageDigest: this.imageDigest,
      cpuMillis: this.cpuMillis,
      memoryMb: this.memoryMb,
      timeoutSec: this.timeoutSec,
      createdAt: this.createdAt?.toISOString() ?? null,
      expiresAt: this.expiresAt?.toISOString() ?? null,
      metadata: this.metadata,
      network: this.network,
      publicId: this.publicId,
    };
    if (this.diskMb !== undefined) data.diskMb = this.diskMb;
    if (this.endedAt !== null) data.endedAt = this.endedAt.toISOString();
    if (this.endReason !== undefined) data.endReason = this.endReason;
    if (this.endMessage !== undefined) data.endMessage = this.endMessage;
    if (Object.keys(this.urls).length > 0) data.urls = this.urls;
    return data;
  }

  get #path(): string {
    return `/v1/sandboxes/${encodeURIComponent(this.id)}`;
  }

  async #post(
    suffix: string,
    body: unknown,
    kind: 'idempotent' | 'unsafe',
    options: CallOptions,
  ): Promise<this> {
    const answer = await this.client.call({
      method: 'POST',
      path: `${this.#path}${suffix}`,
      body,
      kind,
      signal: options.signal,
    });
    this.#apply((await answer.response.json()) as SandboxData);
    return this;
  }

  #apply(data: SandboxData): void {
    this.state = data.state;
    this.image = data.image;
    this.imageDigest = data.imageDigest;
    this.cpuMillis = data.cpuMillis;
    this.memoryMb = data.memoryMb;
    this.diskMb = data.diskMb;
    this.timeoutSec = data.timeoutSec;
    this.createdAt = parseTime(data.createdAt);
    this.expiresAt = parseTime(data.expiresAt);
    this.endedAt = parseTime(data.endedAt);
    this.endReason = data.endReason;
    this.endMessage = data.endMessage;
    this.metadata = data.metadata ?? {};
    this.network = data.network;
    this.publicId = data.publicId;
    this.urls = data.urls ?? {};
  }

  static async #read(client: Isorun, id: string, signal: AbortSignal | undefined): Promise<SandboxData> {
    const answer = await client.call({
      method: 'GET',
      path: `/v1/sandboxes/${encodeURIComponent(id)}`,
      kind: 'idempotent',
      signal,
    });
    return (await answer.response.json()) as SandboxData;
  }

  /** @internal: a sandbox from a list page. */
  static fromData(client: Isorun, data: SandboxData): Sandbox {
    return new Sandbox(client, data);
  }
}

/** `Sandbox.list(...)`: iterate sandboxes (`for await`), pages (`.pages()`), or `.toArray()`. */
export class SandboxPages implements AsyncIterable<Sandbox> {
  readonly #client: Isorun;
  readonly #options: ListSandboxesOptions;

  constructor(client: Isorun, options: ListSandboxesOptions) {
    this.#client = client;
    this.#options = options;
  }

  async *pages(): AsyncGenerator<Sandbox[], void, undefined> {
    let token = '';
    do {
      const query = new URLSearchParams();
      const { state, metadata, pageSize } = this.#options;
      if (state !== undefined) query.set('state', Array.isArray(state) ? state.join(',') : state);
      for (const [key, value] of Object.entries(metadata ?? {})) query.append(`metadata.${key}`, value);
      if (pageSize !== undefined) query.set('pageSize', String(pageSize));
      if (token !== '') query.set('pageToken', token);
      const answer = await this.#client.call({
        method: 'GET',
        path: '/v1/sandboxes',
        query,
        kind: 'idempotent',
        signal: this.#options.signal,
      });
      const page = (await answer.response.json()) as SandboxListData;
      yield page.sandboxes.map((s) => Sandbox.fromData(this.#client, s));
      token = page.nextPageToken ?? '';
    } while (token !== '');
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Sandbox, void, undefined> {
    for await (const page of this.pages()) yield* page;
  }

  async toArray(): Promise<Sandbox[]> {
    const all: Sandbox[] = [];
    for await (const sandbox of this) all.push(sandbox);
    return all;
  }
}
