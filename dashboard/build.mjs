// Bundles the dashboard into one folder the gateway serves (--dashboard_dir): index.html,
// app.js (with uPlot), app.css. Usage: node build.mjs [OUT_DIR] (default ../build/dashboard).
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, '..', 'build', 'dashboard'));
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, 'src', 'main.ts')],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  outfile: join(out, 'app.js'),
  logLevel: 'warning',
});
// uPlot's stylesheet first, ours after it.
const css =
  readFileSync(join(here, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'), 'utf8') +
  '\n' +
  readFileSync(join(here, 'src', 'styles.css'), 'utf8');
writeFileSync(join(out, 'app.css'), css);
copyFileSync(join(here, 'src', 'index.html'), join(out, 'index.html'));
console.log(`dashboard built into ${out}`);
