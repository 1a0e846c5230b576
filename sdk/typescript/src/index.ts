/**
 * @isorun/sdk: sandboxes on Isorun from TypeScript and JavaScript.
 *
 *   import { Sandbox } from '@isorun/sdk';
 *   const sandbox = await Sandbox.create({ image: 'python:3.12' });
 *   const { stdout } = await sandbox.exec('python -c "print(6*7)"');
 */
export { Isorun, SDK_VERSION, defaultIsorun } from './client.js';
export type { IsorunOptions, RetryInfo, CallSpec, CallKind, Answer, ClientChoice } from './client.js';
export { Sandbox, SandboxPages, DEFAULT_LOCAL_IMAGE } from './sandbox.js';
export type { CreateSandboxOptions, ConnectOptions, ListSandboxesOptions, CallOptions } from './sandbox.js';
export { ExecStream } from './stream.js';
export type { ExecOptions, ExecStreamOptions } from './stream.js';
export {
  IsorunError,
  InvalidArgumentError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  SandboxNotRunningError,
  RateLimitError,
  ExecTimeoutError,
  ServiceUnavailableError,
  ConnectionError,
  ConfigurationError,
  ApiKeyError,
} from './errors.js';
export type { ApiErrorBody } from './errors.js';
export { parseApiKey, apiUrlForRegion, publicUrlForRegion, KEY_FORMAT } from './config.js';
export type { ParsedApiKey } from './config.js';
export type * from './types.js';
