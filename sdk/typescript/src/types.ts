/** Shapes of the API's JSON (API.md), as the gateway sends them. */

export type SandboxState =
  | 'PENDING'
  | 'STARTING'
  | 'RUNNING'
  | 'HIBERNATED'
  | 'DESTROYING'
  | 'DESTROYED'
  | 'FAILED'
  | 'LOST';

export type EndReason =
  | 'DELETED'
  | 'IDLE_TIMEOUT'
  | 'RUNNER_LOST'
  | 'START_FAILED'
  | 'HIBERNATION_EXPIRED';

export interface NetworkProfile {
  egress: 'open' | 'none' | 'allowlist';
  /** With `allowlist`: host names (`*.example.com`), addresses and CIDR blocks. */
  allow?: string[];
}

/** The sandbox object of the API. */
export interface SandboxData {
  id: string;
  state: SandboxState;
  image: string;
  imageDigest: string;
  cpuMillis: number;
  memoryMb: number;
  diskMb?: number;
  timeoutSec: number;
  createdAt: string | null;
  expiresAt: string | null;
  endedAt?: string;
  endReason?: EndReason;
  endMessage?: string;
  metadata: Record<string, string>;
  network: NetworkProfile;
  publicId: string;
  urls?: Record<string, string>;
}

export interface SandboxListData {
  sandboxes: SandboxData[];
  nextPageToken: string;
}

/** What a command left: a non-zero exit code is a result, not an error. */
export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** Output past the service's cap was cut. */
  stdoutTruncated?: boolean;
  stderrTruncated?: boolean;
}

/** One piece of a streamed command's output. */
export type ExecChunk = { stdout: string } | { stderr: string };

export interface UsageLimits {
  maxConcurrent: number;
  maxHibernated?: number;
  maxConcurrentExecs?: number;
  /** Seconds a hibernated sandbox is kept before it is destroyed (HIBERNATION_EXPIRED). */
  hibernationRetentionSec?: number;
  createsPerSec: number | null;
  requestsPerSec: number | null;
}

export interface Usage {
  activeSandboxes: number;
  hibernatedSandboxes: number;
  limits: UsageLimits;
}
