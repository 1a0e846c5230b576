// Test support: the live cluster's environment (set by isorun-run-with-cluster), isorunctl, a
// fetch that checks every answer of the gateway against the OpenAPI document, and cleanup.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { createRequire } from 'node:module';

import { Isorun, type IsorunOptions, Sandbox } from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// .test-build/test -> the repository
export const REPO = path.resolve(here, '..', '..', '..', '..');
export const OPENAPI_PATH = path.join(REPO, 'services', 'gateway', 'openapi.json');

export function env(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(`${name} is not set: run this suite under isorun-run-with-cluster (ctest -L sdk)`);
  }
  return value;
}

export const API_URL = (): string => env('ISORUN_API_URL');
export const API_KEY = (): string => env('ISORUN_API_KEY');

/** Why exec cannot run here ('' when it can): the simulated runners run no processes. */
export function execUnavailable(): string {
  if (process.env['ISORUN_TEST_DRIVER'] === 'runc') return '';
  return `needs real sandboxes; the cluster runs simulated runners: ${process.env['ISORUN_TEST_SIM_REASON'] ?? 'unknown reason'}`;
}

/** Runs isorunctl against the cluster's database; returns its stdout. */
export function ctl(...args: string[]): string {
  return execFileSync(path.join(env('ISORUN_BIN_DIR'), 'isorunctl'), args, {
    env: { ...process.env, ISORUN_DATABASE_URL: env('ISORUN_DATABASE_URL') },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** A new tenant (isorunctl tenants create NAME FLAGS...) and a key of `region` for it. */
export function newTenant(prefix: string, flags: string[] = [], region = 'local'): { name: string; key: string } {
  const name = `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
  ctl('tenants', 'create', name, ...flags);
  return { name, key: ctl('keys', 'create', name, '--region', region).trim() };
}

// ---- OpenAPI: every answer the gateway gives in these suites is checked against the document.

type Json = Record<string, unknown>;
const require = createRequire(import.meta.url);
// ajv is CommonJS; its 2020-12 build is what OpenAPI 3.1 schemas are.
const Ajv2020 = require('ajv/dist/2020.js') as { default: new (o: object) => AjvLike };
const addFormats = require('ajv-formats') as { default: (ajv: AjvLike) => void };
interface AjvLike {
  addSchema(schema: object, key: string): void;
  getSchema(key: string): ((data: unknown) => boolean) & { errors?: unknown } | undefined;
  errorsText(errors?: unknown): string;
}

export const openapi = JSON.parse(readFileSync(OPENAPI_PATH, 'utf8')) as Json;
const ajv = new Ajv2020.default({ strict: false, validateSchema: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema(openapi, 'openapi.json');

const pointerPart = (s: string): string => s.replace(/~/g, '~0').replace(/\//g, '~1');

function resolveRef(ref: string): { node: Json; pointer: string } {
  const pointer = ref.slice(1);
  let node: unknown = openapi;
  for (const part of pointer.split('/').slice(1)) {
    node = (node as Json)[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return { node: node as Json, pointer };
}

const templates = Object.keys(openapi['paths'] as Json).map((template) => ({
  template,
  regex: new RegExp(`^${template.replace(/[.:]/g, (c) => `\\${c}`).replace(/\{[^}]+\}/g, '[^/]+')}$`),
}));

export interface Checked {
  operation: string;
  status: number;
}
export const checked: Checked[] = [];
export const violations: string[] = [];

function operationId(method: string, pathname: string): string {
  const match = templates.find((t) => t.regex.test(pathname));
  const item = match === undefined ? undefined : ((openapi['paths'] as Json)[match.template] as Json);
  const operation = item?.[method.toLowerCase()] as Json | undefined;
  return String(operation?.['operationId'] ?? 'unknown');
}

/** The compiled schema for an answer, or a reason why there is none. */
function schemaFor(
  method: string,
  pathname: string,
  status: number,
  contentType: string,
): { validate: ((d: unknown) => boolean) & { errors?: unknown }; operation: string } | string {
  const match = templates.find((t) => t.regex.test(pathname));
  if (match === undefined) return `no path of the document matches ${pathname}`;
  const item = (openapi['paths'] as Json)[match.template] as Json;
  const operation = item[method.toLowerCase()] as Json | undefined;
  if (operation === undefined) return `the document has no ${method} ${match.template}`;
  const responses = operation['responses'] as Json;
  const key = String(status) in responses ? String(status) : 'default';
  let response = responses[key] as Json | undefined;
  let pointer = `#/paths/${pointerPart(match.template)}/${method.toLowerCase()}/responses/${key}`;
  if (response === undefined) return `${method} ${match.template} documents no ${status} answer`;
  if (typeof response['$ref'] === 'string') {
    const resolved = resolveRef(response['$ref']);
    response = resolved.node;
    pointer = `#${resolved.pointer}`;
  }
  const media = contentType.split(';')[0]!.trim();
  const content = response['content'] as Json | undefined;
  if (content === undefined) return status === 204 ? 'empty' : `${method} ${match.template} ${status} documents no body`;
  if (!(media in content)) return `${method} ${match.template} ${status} documents no ${media} body`;
  const validate = ajv.getSchema(`openapi.json${pointer}/content/${pointerPart(media)}/schema`);
  if (validate === undefined) return `cannot compile the schema at ${pointer}`;
  return { validate, operation: String(operation['operationId']) };
}

function check(method: string, url: string, status: number, contentType: string, body: string): void {
  const pathname = new URL(url).pathname;
  const found = schemaFor(method, pathname, status, contentType);
  if (found === 'empty') {
    if (body !== '') violations.push(`${method} ${pathname} ${status}: a body where none is documented`);
    else checked.push({ operation: operationId(method, pathname), status });
    return;
  }
  if (typeof found === 'string') {
    violations.push(`${method} ${pathname} ${status}: ${found}`);
    return;
  }
  const values: unknown[] = [];
  try {
    if (contentType.startsWith('application/x-ndjson')) {
      for (const line of body.split('\n')) if (line.trim() !== '') values.push(JSON.parse(line));
    } else {
      values.push(JSON.parse(body));
    }
  } catch (e) {
    violations.push(`${method} ${pathname} ${status}: not JSON: ${String(e)}: ${body.slice(0, 200)}`);
    return;
  }
  for (const value of values) {
    if (!found.validate(value)) {
      violations.push(
        `${method} ${pathname} ${status} (${found.operation}): ${ajv.errorsText(found.validate.errors)}: ${JSON.stringify(value).slice(0, 300)}`,
      );
    }
  }
  checked.push({ operation: found.operation, status });
}

/** fetch that checks each answer's body (streams line by line, as they are read) on the side. */
export const checkingFetch: typeof fetch = async (input, init) => {
  const response = await fetch(input, init);
  const method = (init?.method ?? 'GET').toUpperCase();
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
  const contentType = response.headers.get('content-type') ?? '';
  if (response.body === null) {
    check(method, url, response.status, contentType, '');
    return response;
  }
  const [mine, theirs] = response.body.tee();
  void new Response(mine)
    .text()
    .then((text) => check(method, url, response.status, contentType, text))
    .catch(() => undefined); // an aborted stream: nothing complete to check
  return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
};

/** A client of the live cluster whose answers are checked against the document. */
export function client(options: IsorunOptions = {}): Isorun {
  return new Isorun({ apiKey: API_KEY(), apiUrl: API_URL(), fetch: checkingFetch, ...options });
}

/** Sandboxes made by a suite, destroyed after it. */
export const made: Sandbox[] = [];
export async function destroyMade(): Promise<void> {
  await Promise.allSettled(made.splice(0).map((s) => s.destroy()));
}

export function assertNoViolations(): void {
  if (violations.length > 0) {
    throw new Error(`answers that do not fit ${OPENAPI_PATH}:\n${violations.join('\n')}`);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns true or `ms` pass. */
export async function eventually(fn: () => Promise<boolean>, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return true;
    await sleep(100);
  }
  return fn();
}
