/**
 * Every error the SDK throws is an {@link IsorunError}. Answers of the API (non-2xx) carry the
 * HTTP status, API.md's `code` and `reason`, the parsed error body and the request id; their
 * message starts with the HTTP status and includes the first 200 bytes of the response body.
 * Subclasses say what happened, so callers can branch with `instanceof`.
 */

/** API.md's error body, `{"error": {...}}`, as the gateway sends it. */
export interface ApiErrorBody {
  status: number;
  code: string;
  reason: string;
  message: string;
  retryAfterSec?: number;
  limit?: number;
  current?: number;
}

/** What the SDK knows about a failed call. */
export interface IsorunErrorInit {
  status: number;
  code: string;
  reason: string;
  body?: ApiErrorBody | undefined;
  rawBody?: string | undefined;
  requestId?: string | undefined;
  method?: string | undefined;
  url?: string | undefined;
  cause?: unknown;
}

/** The first `max` bytes of `text` as UTF-8 (a character cut in half is replaced). */
export function firstBytes(text: string, max = 200): string {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= max) return text;
  return new TextDecoder().decode(bytes.subarray(0, max));
}

export class IsorunError extends Error {
  /** HTTP status of the answer; 0 when there was none (bad key, connection failure). */
  readonly status: number;
  /** gRPC code name from the error body (`RESOURCE_EXHAUSTED`), or the SDK's own word. */
  readonly code: string;
  /** Stable machine-readable word (`RATE_LIMIT`, `KEY_REVOKED`, `EXEC_TIMEOUT`, ...). */
  readonly reason: string;
  /** The parsed `error` object of API.md's error body, when the answer had one. */
  readonly body: ApiErrorBody | undefined;
  /** The response body as received (text). */
  readonly rawBody: string | undefined;
  /** The gateway's `X-Request-Id`, for support and logs. */
  readonly requestId: string | undefined;
  readonly method: string | undefined;
  readonly url: string | undefined;

  constructor(message: string, init: IsorunErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status;
    this.code = init.code;
    this.reason = init.reason;
    this.body = init.body;
    this.rawBody = init.rawBody;
    this.requestId = init.requestId;
    this.method = init.method;
    this.url = init.url;
  }
}

/** 400: the request was invalid (`INVALID_ARGUMENT`, `IMAGE_NOT_PINNED`, ...); nothing changed. */
export class InvalidArgumentError extends IsorunError {}
/** 401: the key is missing, malformed, unknown, revoked or of another region. */
export class AuthenticationError extends IsorunError {}
/** 403: the key's role may not do this. */
export class PermissionDeniedError extends IsorunError {}
/** 404: no such sandbox (or another tenant's), route or image. */
export class NotFoundError extends IsorunError {}
/** 409: the sandbox is not in a state for this (`SANDBOX_NOT_RUNNING`). */
export class SandboxNotRunningError extends IsorunError {}
/** 503: a service behind the gateway is unavailable; safe calls are retried before this. */
export class ServiceUnavailableError extends IsorunError {}

/** 429: a limit was hit. `retryAfterSec` says when to try again. */
export class RateLimitError extends IsorunError {
  readonly retryAfterSec: number | undefined;
  readonly limit: number | undefined;
  readonly current: number | undefined;
  constructor(message: string, init: IsorunErrorInit, retryAfterSec: number | undefined) {
    super(message, init);
    this.retryAfterSec = retryAfterSec;
    this.limit = init.body?.limit;
    this.current = init.body?.current;
  }
}

/** 504 `EXEC_TIMEOUT`: the command ran past its timeout and was killed with its process group. */
export class ExecTimeoutError extends IsorunError {}

/** No HTTP answer: the connection failed or broke. `url` is the URL tried. */
export class ConnectionError extends IsorunError {}

/** The client's configuration is unusable (a bad URL, a bad option); nothing was sent. */
export class ConfigurationError extends IsorunError {}

/**
 * The API key is missing or malformed; thrown before any request is sent. The message says what
 * is wrong and never contains the key's secret.
 */
export class ApiKeyError extends ConfigurationError {}

function parseErrorBody(text: string): ApiErrorBody | undefined {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const error = (parsed as { error?: unknown }).error;
    if (typeof error !== 'object' || error === null) return undefined;
    const e = error as Record<string, unknown>;
    if (typeof e['reason'] !== 'string' || typeof e['code'] !== 'string') return undefined;
    return error as ApiErrorBody;
  } catch {
    return undefined;
  }
}

const CODE_FOR_STATUS: Record<number, string> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHENTICATED',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  409: 'FAILED_PRECONDITION',
  429: 'RESOURCE_EXHAUSTED',
  499: 'CANCELLED',
  500: 'INTERNAL',
  501: 'UNIMPLEMENTED',
  503: 'UNAVAILABLE',
  504: 'DEADLINE_EXCEEDED',
};

/**
 * The error for a non-2xx answer (or an `{"error": ...}` line of a stream): the subclass by
 * meaning, and a message `"<status> <reason>: <message> (<METHOD> <path>; body: <200 bytes>)"`.
 */
export function errorFromResponse(args: {
  status: number;
  text: string;
  method: string;
  url: string;
  requestId?: string | undefined;
  retryAfterHeader?: string | null | undefined;
}): IsorunError {
  const body = parseErrorBody(args.text);
  const reason = body?.reason ?? CODE_FOR_STATUS[args.status] ?? 'UNKNOWN';
  const code = body?.code ?? CODE_FOR_STATUS[args.status] ?? 'UNKNOWN';
  const path = safePath(args.url);
  let hint = '';
  if (reason === 'EXEC_TIMEOUT') {
    hint = ' Give the command a longer timeout (exec(cmd, {timeoutSec})) or use execStream, which has none.';
  }
  const message =
    `${args.status} ${reason}: ${body?.message ?? 'the server answered without an error body'}` +
    ` (${args.method} ${path}; body: ${firstBytes(args.text)})${hint}`;
  const init: IsorunErrorInit = {
    status: args.status,
    code,
    reason,
    body,
    rawBody: args.text,
    requestId: args.requestId,
    method: args.method,
    url: args.url,
  };
  switch (args.status) {
    case 400:
      return new InvalidArgumentError(message, init);
    case 401:
      return new AuthenticationError(message, init);
    case 403:
      return new PermissionDeniedError(message, init);
    case 404:
      return new NotFoundError(message, init);
    case 409:
      return new SandboxNotRunningError(message, init);
    case 429: {
      const header = Number.parseInt(args.retryAfterHeader ?? '', 10);
      const retryAfter = body?.retryAfterSec ?? (Number.isFinite(header) ? header : undefined);
      return new RateLimitError(message, init, retryAfter);
    }
    case 503:
      return new ServiceUnavailableError(message, init);
    case 504:
      if (reason === 'EXEC_TIMEOUT') return new ExecTimeoutError(message, init);
      return new IsorunError(message, init);
    default:
      return new IsorunError(message, init);
  }
}

/** The path of a URL, for messages (never the query, which may carry filters). */
function safePath(url: string): string {
  try {
    return new URL(url).pathname;
  } catch {
    return url;
  }
}
