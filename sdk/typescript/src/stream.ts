/**
 * `execStream`: the command's output as it comes, from `POST .../exec:stream` (NDJSON). The
 * object is both awaitable (the result, once the command ends) and an async iterable of
 * `{stdout}` / `{stderr}` chunks; callbacks fire as output arrives. Aborting the signal closes
 * the HTTP stream, and the gateway kills the command.
 */
import type { Isorun } from './client.js';
import { ConnectionError, errorFromResponse, IsorunError } from './errors.js';
import type { ExecChunk, ExecResult } from './types.js';

export interface ExecOptions {
  /** Seconds before the command is killed (exec: default 30, 504 `EXEC_TIMEOUT`; execStream: none). */
  timeoutSec?: number;
  env?: Record<string, string>;
  cwd?: string;
  /** Text written to the command's standard input. */
  stdin?: string;
  /** exec: stops waiting (the command runs on until its timeout); execStream: kills the command. */
  signal?: AbortSignal;
}

export interface ExecStreamOptions extends ExecOptions {
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
}

export function execBody(cmd: string, options: ExecOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { cmd };
  if (options.timeoutSec !== undefined) body['timeoutSec'] = options.timeoutSec;
  if (options.env !== undefined) body['env'] = options.env;
  if (options.cwd !== undefined) body['cwd'] = options.cwd;
  if (options.stdin !== undefined) body['stdin'] = options.stdin;
  return body;
}

type Waiter = {
  resolve: (r: IteratorResult<ExecChunk>) => void;
  reject: (e: unknown) => void;
};

export class ExecStream implements AsyncIterable<ExecChunk>, PromiseLike<ExecResult> {
  readonly #client: Isorun;
  readonly #sandboxId: string;
  readonly #cmd: string;
  readonly #options: ExecStreamOptions;
  #done: Promise<ExecResult> | undefined;
  // Chunks wait here only while someone iterates.
  #iterating = false;
  readonly #queue: ExecChunk[] = [];
  #waiter: Waiter | undefined;
  #ended = false;
  #failure: unknown;

  constructor(client: Isorun, sandboxId: string, cmd: string, options: ExecStreamOptions) {
    this.#client = client;
    this.#sandboxId = sandboxId;
    this.#cmd = cmd;
    this.#options = options;
  }

  /** Resolves the result once the command ends (starting the command if nothing did). */
  then<A = ExecResult, B = never>(
    onFulfilled?: ((value: ExecResult) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    return this.#start().then(onFulfilled, onRejected);
  }

  catch<B = never>(onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null): Promise<ExecResult | B> {
    return this.#start().catch(onRejected);
  }

  finally(onFinally?: (() => void) | null): Promise<ExecResult> {
    return this.#start().finally(onFinally);
  }

  /** Chunks in order; ends when the command ends, throws what the stream failed with. */
  [Symbol.asyncIterator](): AsyncIterator<ExecChunk> {
    this.#iterating = true;
    this.#start();
    return {
      next: () => {
        const chunk = this.#queue.shift();
        if (chunk !== undefined) return Promise.resolve({ value: chunk, done: false });
        if (this.#ended) {
          if (this.#failure !== undefined) {
            const failure = this.#failure;
            this.#failure = undefined;
            return Promise.reject(failure);
          }
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          this.#waiter = { resolve, reject };
        });
      },
      // `break` out of the loop: stop collecting chunks; the command runs on (abort to kill it).
      return: () => {
        this.#iterating = false;
        this.#queue.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }

  #start(): Promise<ExecResult> {
    if (this.#done === undefined) {
      this.#done = this.#run().then(
        (result) => {
          this.#finish(undefined);
          return result;
        },
        (error: unknown) => {
          this.#finish(error);
          throw error;
        },
      );
      // Whoever iterates sees the failure there; an unawaited result must not crash the process.
      this.#done.catch(() => undefined);
    }
    return this.#done;
  }

  #push(chunk: ExecChunk): void {
    if ('stdout' in chunk) this.#options.onStdout?.(chunk.stdout);
    else this.#options.onStderr?.(chunk.stderr);
    if (!this.#iterating) return;
    if (this.#waiter !== undefined) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter.resolve({ value: chunk, done: false });
    } else {
      this.#queue.push(chunk);
    }
  }

  #finish(error: unknown): void {
    this.#ended = true;
    if (this.#waiter !== undefined) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      if (error !== undefined) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    } else if (error !== undefined && this.#iterating) {
      this.#failure = error;
    }
  }

  async #run(): Promise<ExecResult> {
    const started = Date.now();
    const path = `/v1/sandboxes/${encodeURIComponent(this.#sandboxId)}/exec:stream`;
    const answer = await this.#client.call({
      method: 'POST',
      path,
      body: execBody(this.#cmd, this.#options),
      headers: { Accept: 'application/x-ndjson' },
      kind: 'exec',
      signal: this.#options.signal,
    });
    const body = answer.response.body;
    const url = answer.response.url || `${this.#client.apiUrl}${path}`;
    if (body === null) throw this.#broken(url, 'the answer had no body');
    const decoder = new TextDecoder();
    let pending = '';
    let stdout = '';
    let stderr = '';
    const reader = body.getReader();
    try {
      for (;;) {
        let read: ReadableStreamReadResult<Uint8Array>;
        try {
          read = await reader.read();
        } catch (e) {
          if (this.#options.signal?.aborted) throw this.#options.signal.reason;
          throw this.#broken(url, e instanceof Error ? e.message : String(e), e);
        }
        if (read.done) break;
        pending += decoder.decode(read.value, { stream: true });
        let newline: number;
        while ((newline = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, newline).trim();
          pending = pending.slice(newline + 1);
          if (line === '') continue;
          const parsed = this.#parseLine(line, url, answer.response.headers.get('x-request-id'));
          if ('stdout' in parsed) {
            stdout += parsed.stdout;
            this.#push({ stdout: parsed.stdout });
          } else if ('stderr' in parsed) {
            stderr += parsed.stderr;
            this.#push({ stderr: parsed.stderr });
          } else {
            return { exitCode: parsed.exitCode, stdout, stderr, durationMs: Date.now() - started };
          }
        }
      }
    } finally {
      reader.releaseLock();
    }
    throw this.#broken(url, 'the stream ended before the command did');
  }

  #parseLine(
    line: string,
    url: string,
    requestId: string | null,
  ): { stdout: string } | { stderr: string } | { exitCode: number } {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw this.#broken(url, `an unreadable line: ${line.slice(0, 200)}`);
    }
    const v = value as Record<string, unknown>;
    if (typeof v['stdout'] === 'string') return { stdout: v['stdout'] };
    if (typeof v['stderr'] === 'string') return { stderr: v['stderr'] };
    if (typeof v['exitCode'] === 'number') return { exitCode: v['exitCode'] };
    if (typeof v['error'] === 'object' && v['error'] !== null) {
      const status = (v['error'] as { status?: unknown }).status;
      throw errorFromResponse({
        status: typeof status === 'number' ? status : 500,
        text: line,
        method: 'POST',
        url,
        requestId: requestId ?? undefined,
      });
    }
    throw this.#broken(url, `an unexpected line: ${line.slice(0, 200)}`);
  }

  #broken(url: string, why: string, cause?: unknown): IsorunError {
    return new ConnectionError(`exec:stream from ${url} broke: ${why}`, {
      status: 0,
      code: 'UNAVAILABLE',
      reason: 'STREAM_BROKEN',
      method: 'POST',
      url,
      cause,
    });
  }
}
