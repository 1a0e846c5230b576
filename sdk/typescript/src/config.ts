/**
 * API keys and endpoints. A key is `isr_<region>_<keyId>_<secret>`; the SDK checks its shape
 * before any request and derives the endpoint from its region: `local` is a local cluster
 * (`http://127.0.0.1:8080`), any other region `https://api.<region>.<ISORUN_DOMAIN>` (default
 * domain `isorun.dev`). `apiUrl` or `ISORUN_API_URL` overrides the derived endpoint.
 */
import { ApiKeyError, ConfigurationError } from './errors.js';

export const KEY_FORMAT = 'isr_<region>_<keyId>_<secret>';
/** 32 random bytes in base62. */
export const MIN_SECRET_LENGTH = 43;
export const DEFAULT_DOMAIN = 'isorun.dev';
export const LOCAL_API_URL = 'http://127.0.0.1:8080';
export const LOCAL_PUBLIC_URL = 'http://127.0.0.1:8081';

export interface ParsedApiKey {
  /** The region segment (`local`, `eu-west-1`). */
  region: string;
  /** Identifies the key; safe to show and log. */
  keyId: string;
}

const REGION = /^[a-z0-9-]{1,63}$/;
const BASE62 = /^[A-Za-z0-9]{1,128}$/;

function keyError(reason: string, what: string): ApiKeyError {
  return new ApiKeyError(`Isorun API key ${what}; keys look like ${KEY_FORMAT}`, {
    status: 0,
    code: 'CLIENT',
    reason,
  });
}

/**
 * Checks the shape of a key and returns its region and keyId. Throws {@link ApiKeyError} saying
 * what is wrong; the message names parts and lengths, never the key's characters.
 */
export function parseApiKey(key: string | undefined): ParsedApiKey {
  if (key === undefined || key.trim() === '') {
    throw keyError('KEY_MISSING', 'missing: pass apiKey or set ISORUN_API_KEY');
  }
  const text = key.trim();
  if (!text.startsWith('isr_')) {
    throw keyError('KEY_MALFORMED', 'is malformed: it does not start with "isr_"');
  }
  const parts = text.slice(4).split('_');
  if (parts.length !== 3) {
    throw keyError(
      'KEY_MALFORMED',
      `is malformed: it has ${parts.length + 1} parts separated by "_", not 4` +
        (parts.length < 3 ? ' (a truncated or edited key?)' : ''),
    );
  }
  const [region, keyId, secret] = parts as [string, string, string];
  if (!REGION.test(region)) {
    throw keyError(
      'KEY_MALFORMED',
      'is malformed: its region part must be 1-63 lowercase letters, digits or "-"',
    );
  }
  if (!BASE62.test(keyId)) {
    throw keyError('KEY_MALFORMED', 'is malformed: its keyId part must be letters and digits');
  }
  if (!BASE62.test(secret)) {
    throw keyError(
      'KEY_MALFORMED',
      secret === ''
        ? 'is malformed: its secret part is empty (a truncated key?)'
        : 'is malformed: its secret part must be letters and digits',
    );
  }
  if (secret.length < MIN_SECRET_LENGTH) {
    throw keyError(
      'KEY_MALFORMED',
      `is malformed: its secret is ${secret.length} characters, at least ${MIN_SECRET_LENGTH} ` +
        'expected (a truncated key?)',
    );
  }
  return { region, keyId };
}

/** The API endpoint of a region: `local` -> 127.0.0.1:8080, others https://api.<region>.<domain>. */
export function apiUrlForRegion(region: string, domain: string = DEFAULT_DOMAIN): string {
  if (region === 'local') return LOCAL_API_URL;
  return `https://api.${region}.${domain}`;
}

/** The base of a region's public URLs (`<port>-<publicId>.` goes before its host). */
export function publicUrlForRegion(region: string, domain: string = DEFAULT_DOMAIN): string {
  if (region === 'local') return LOCAL_PUBLIC_URL;
  return `https://${region}.${domain}`;
}

/** `url` without trailing slashes, checked to be an http(s) URL. */
export function normalizeBaseUrl(url: string, what: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigurationError(`${what} is not a URL: ${JSON.stringify(url)}`, {
      status: 0,
      code: 'CLIENT',
      reason: 'INVALID_URL',
    });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ConfigurationError(`${what} must be an http or https URL: ${JSON.stringify(url)}`, {
      status: 0,
      code: 'CLIENT',
      reason: 'INVALID_URL',
    });
  }
  return url.replace(/\/+$/, '');
}
