// The chart's flag values against the services' flags: every ABSL_FLAG of each service's main.cc
// is either set by the chart itself (MANAGED) or settable as <service>.flags.<name>, typed in
// values.schema.json (definitions.<service>Flags).
//   node flags.mjs REPO          check; exit 1 listing flags missing from or unknown to the schema
//   node flags.mjs REPO --write  rewrite the definitions from main.cc (after adding a flag)
import fs from 'node:fs';
import path from 'node:path';

const SERVICES = {
  gateway: 'services/gateway/main.cc',
  lifecycle: 'services/lifecycle/main.cc',
  quota: 'quotas/main.cc',
  scheduler: 'scheduler/main.cc',
  runner: 'services/runner/main.cc',
};

// Flags the chart sets from its own values (addresses, database, identity).
export const MANAGED = {
  gateway: ['http_addr', 'metrics_addr', 'lifecycle_addr', 'quota_addr', 'region', 'database_url',
    'scheduler_admin_url', 'public_addr', 'public_domain', 'forwarded_proto', 'tunnel_token'],
  lifecycle: ['grpc_addr', 'metrics_addr', 'database_url', 'quota_addr', 'scheduler_addr', 'region'],
  quota: ['grpc_addr', 'metrics_addr', 'database_url'],
  scheduler: ['grpc_addr', 'metrics_addr', 'database_url', 'admin_http_addr'],
  runner: ['grpc_addr', 'advertise_addr', 'metrics_addr', 'scheduler_addr', 'runner_name', 'region',
    'data_dir', 'registry', 'tunnel_addr', 'tunnel_advertise_addr', 'tunnel_token'],
};
for (const m of Object.values(MANAGED)) m.push('tls', 'tls_cert_file', 'tls_key_file', 'tls_ca_file', 'health_addr');

function schemaType(cppType) {
  if (/^(int|int32_t|int64_t|uint32_t|uint64_t|size_t)$/.test(cppType)) return { type: 'integer' };
  if (/^(double|float)$/.test(cppType)) return { type: 'number' };
  if (cppType === 'bool') return { type: 'boolean' };
  if (cppType === 'absl::Duration') {
    return { type: 'string', pattern: '^(inf|-inf|0|([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+)$' };
  }
  return { type: 'string' };
}

// The arguments of each ABSL_FLAG(type, name, default, help) of a source file.
function absl_flags(text) {
  const out = [];
  let at = 0;
  while ((at = text.indexOf('ABSL_FLAG(', at)) >= 0) {
    let i = at + 'ABSL_FLAG('.length;
    let depth = 0;
    let arg = '';
    const args = [];
    for (; i < text.length; i++) {
      const c = text[i];
      if (c === '"') {
        let j = i + 1;
        while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
        arg += text.slice(i, j + 1);
        i = j;
      } else if (c === '(' || c === '{') {
        depth++;
        arg += c;
      } else if ((c === ')' || c === '}') && depth > 0) {
        depth--;
        arg += c;
      } else if (c === ')') {
        args.push(arg.trim());
        break;
      } else if (c === ',' && depth === 0) {
        args.push(arg.trim());
        arg = '';
      } else {
        arg += c;
      }
    }
    at = i;
    const help = [...(args[3] ?? '').matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]).join('');
    out.push({ type: args[0], name: args[1], help: help.replace(/\\"/g, '"') });
  }
  return out;
}

export function serviceFlags(repo, service) {
  const text = fs.readFileSync(path.join(repo, SERVICES[service]), 'utf8');
  const flags = {};
  for (const f of absl_flags(text)) flags[f.name] = { ...schemaType(f.type), description: f.help };
  return flags;
}

function defsFromSource(repo) {
  const defs = {};
  for (const service of Object.keys(SERVICES)) {
    const props = {};
    const all = serviceFlags(repo, service);
    for (const name of Object.keys(all).sort()) {
      if (!MANAGED[service].includes(name)) props[name] = all[name];
    }
    defs[`${service}Flags`] = {
      type: 'object',
      description: `Flags of isorun-${service}, each passed as ISORUN_<FLAG> (see its --help).`,
      additionalProperties: false,
      properties: props,
    };
  }
  return defs;
}

const repo = process.argv[2];
const schemaPath = path.join(repo, 'helm/isorun/values.schema.json');
const schema = JSON.parse(fs.readFileSync(schemaPath, 'utf8'));
const wanted = defsFromSource(repo);
if (process.argv[3] === '--write') {
  schema.definitions = { ...schema.definitions, ...wanted };
  fs.writeFileSync(schemaPath, JSON.stringify(schema, null, 2) + '\n');
  console.log(`wrote ${schemaPath}`);
  process.exit(0);
}
let bad = 0;
for (const [def, body] of Object.entries(wanted)) {
  const have = schema.definitions?.[def]?.properties ?? {};
  for (const [name, spec] of Object.entries(body.properties)) {
    if (!have[name]) {
      console.error(`values.schema.json: ${def} lacks --${name}`);
      bad++;
    } else if (have[name].type !== spec.type) {
      console.error(`values.schema.json: ${def}.${name} is ${have[name].type}, the flag is ${spec.type}`);
      bad++;
    }
  }
  for (const name of Object.keys(have)) {
    if (!body.properties[name]) {
      console.error(`values.schema.json: ${def}.${name} is no flag of the service (any more)`);
      bad++;
    }
  }
}
if (bad) {
  console.error(`${bad} difference(s): run node tests/chart/flags.mjs . --write`);
  process.exit(1);
}
console.log('chart flags: every service flag is settable through values');
