// What the suites import: the package's public surface, plus internals some checks need.
export * from '../src/index.js';
export { firstBytes as firstBytesForTest } from '../src/errors.js';
