// Validates every object of a rendered chart (multi-document YAML from `helm template`) against
// Kubernetes' OpenAPI definitions, rejecting unknown fields as `kubectl apply` with strict field
// validation does:
//  1. a JSON Schema per object type built from the OpenAPI model definitions shipped in
//     @kubernetes/client-node (every property of every type, with its type; additionalProperties
//     false), checked with ajv: unknown fields and wrong types anywhere in an object fail;
//  2. the validators that kubernetes-models generated from the same OpenAPI document (required
//     fields, enums, formats), and those of @kubernetes-models for the CRDs the chart renders
//     (cert-manager's Certificate, the Prometheus Operator's ServiceMonitor).
// Then the chart's own rules for every pod: the restricted security profile for all but the
// runner; the runner privileged but without host namespaces and with one host path; probes on
// every serving container; no environment variable set twice.
// Usage: node validate.mjs RENDERED.yaml  (exit 0: all valid; 1: errors listed on stderr)
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import Ajv from 'ajv';
import YAML from 'yaml';

const require = createRequire(import.meta.url);
const clientNodeModels = path.join(
  path.dirname(require.resolve('@kubernetes/client-node/package.json')), 'dist/gen/models');

// apiVersion -> [OpenAPI model prefix, kubernetes-models module folder].
const CORE_GROUPS = {
  v1: ['V1', 'kubernetes-models/v1'],
  'apps/v1': ['V1', 'kubernetes-models/apps/v1'],
  'batch/v1': ['V1', 'kubernetes-models/batch/v1'],
  'policy/v1': ['V1', 'kubernetes-models/policy/v1'],
  'autoscaling/v2': ['V2', 'kubernetes-models/autoscaling/v2'],
  'networking.k8s.io/v1': ['V1', 'kubernetes-models/networking.k8s.io/v1'],
};
const CRDS = {
  'cert-manager.io/v1': '@kubernetes-models/cert-manager/cert-manager.io/v1',
  'monitoring.coreos.com/v1': '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
};

// JSON Schemas of OpenAPI model types, built on demand.
const definitions = {};
async function define(model) {
  if (model in definitions) return;
  definitions[model] = null;  // in progress (types refer to themselves, e.g. JSONSchemaProps)
  const file = path.join(clientNodeModels, `${model}.js`);
  if (!fs.existsSync(file)) throw new Error(`no OpenAPI model ${model}`);
  const mod = await import(pathToFileURL(file).href);
  const attributes = mod[model].attributeTypeMap;
  const properties = {};
  for (const a of attributes) properties[a.baseName] = await typeSchema(a.type, a.format);
  definitions[model] = { type: 'object', additionalProperties: false, properties };
}

async function typeSchema(type, format) {
  let m;
  if (type === 'string') return { type: 'string' };
  if (type === 'Date') return { type: 'string' };
  if (type === 'boolean') return { type: 'boolean' };
  if (type === 'number') {
    return format === 'int32' || format === 'int64' ? { type: 'integer' } : { type: 'number' };
  }
  if (type === 'any' || type === 'object') return {};
  if (type === 'IntOrString') return { type: ['integer', 'string'] };
  if ((m = /^Array<(.+)>$/.exec(type))) return { type: 'array', items: await typeSchema(m[1]) };
  if ((m = /^\{ \[key: string\]: (.+?);? \}$/.exec(type))) {
    // Maps of strings also hold quantities (resources), which YAML may spell as numbers.
    const value = m[1] === 'string' ? { type: ['string', 'number'] } : await typeSchema(m[1]);
    return { type: 'object', additionalProperties: value };
  }
  if (/^[A-Z]\w*$/.test(type)) {
    await define(type);
    return { $ref: `#/definitions/${type}` };
  }
  throw new Error(`unknown OpenAPI type ${type}`);
}

const ajv = new Ajv({ allErrors: true, strict: false });
const compiled = {};
async function strictValidator(model) {
  if (!compiled[model]) {
    await define(model);
    compiled[model] = ajv.compile({ $ref: `#/definitions/${model}`, definitions });
  }
  return compiled[model];
}

async function modelsValidate(modulePath, kind, obj) {
  let mod;
  try {
    mod = await import(`${modulePath}/${kind}`);
  } catch {
    return [`no kubernetes-models class for ${kind} in ${modulePath}`];
  }
  try {
    new mod[kind](obj).validate();
    return [];
  } catch (e) {
    return [e.message];
  }
}

// The chart's rules for the pod template of a workload.
function podRules(obj) {
  const pod = obj.spec?.template?.spec;
  if (!pod) return [];
  const out = [];
  const component = obj.spec.template.metadata?.labels?.['app.kubernetes.io/component'];
  const hostPaths = (pod.volumes ?? []).filter((v) => v.hostPath);
  if (pod.hostNetwork || pod.hostPID || pod.hostIPC) out.push('uses a host namespace');
  if (pod.automountServiceAccountToken !== false) out.push('mounts a service account token');
  for (const c of pod.containers ?? []) {
    const sc = c.securityContext ?? {};
    const names = (c.env ?? []).map((e) => e.name);
    const twice = names.filter((n, i) => names.indexOf(n) !== i);
    if (twice.length) out.push(`container ${c.name} sets ${twice.join(', ')} twice`);
    if (!c.resources?.requests || !c.resources?.limits) out.push(`container ${c.name} lacks requests or limits`);
    if (obj.kind !== 'Job' && (!c.livenessProbe || !c.readinessProbe)) out.push(`container ${c.name} lacks probes`);
    if (component === 'runner') {
      if (sc.privileged !== true) out.push('the runner is not privileged (runc needs it)');
      continue;
    }
    if (sc.privileged || sc.allowPrivilegeEscalation !== false || sc.readOnlyRootFilesystem !== true ||
        sc.runAsNonRoot !== true || !(sc.capabilities?.drop ?? []).includes('ALL') ||
        sc.seccompProfile?.type !== 'RuntimeDefault') {
      out.push(`container ${c.name} is not restricted`);
    }
  }
  if (component === 'runner') {
    if (hostPaths.length !== 1) out.push(`the runner has ${hostPaths.length} host paths, not its data folder alone`);
  } else {
    if (hostPaths.length) out.push('mounts a host path');
    const psc = pod.securityContext ?? {};
    if (psc.runAsNonRoot !== true || psc.seccompProfile?.type !== 'RuntimeDefault') out.push('pod is not restricted');
  }
  return out;
}

const file = process.argv[2];
const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'));
let errors = 0;
let checked = 0;
const kinds = {};
for (const doc of docs) {
  if (doc.errors.length) {
    console.error(`YAML error: ${doc.errors.map((e) => e.message).join('; ')}`);
    errors++;
    continue;
  }
  const obj = doc.toJS();
  if (obj == null) continue;
  const where = `${obj.kind ?? '?'}/${obj.metadata?.name ?? '?'}`;
  const problems = [];
  if (CORE_GROUPS[obj.apiVersion]) {
    const [prefix, modulePath] = CORE_GROUPS[obj.apiVersion];
    const model = `${prefix}${obj.kind}`;
    let validate;
    try {
      validate = await strictValidator(model);
    } catch (e) {
      problems.push(`${obj.apiVersion} ${obj.kind}: ${e.message}`);
    }
    if (validate && !validate(obj)) {
      for (const e of validate.errors) {
        const extra = e.params?.additionalProperty ? ` (unknown field "${e.params.additionalProperty}")` : '';
        problems.push(`${e.instancePath || '/'}: ${e.message}${extra}`);
      }
    }
    problems.push(...(await modelsValidate(modulePath, obj.kind, obj)));
  } else if (CRDS[obj.apiVersion]) {
    problems.push(...(await modelsValidate(CRDS[obj.apiVersion], obj.kind, obj)));
  } else {
    problems.push(`apiVersion ${obj.apiVersion} is none this check knows`);
  }
  if (!obj.metadata?.name) problems.push('metadata.name is missing');
  if (['Deployment', 'StatefulSet', 'DaemonSet', 'Job'].includes(obj.kind)) problems.push(...podRules(obj));
  checked++;
  kinds[obj.kind] = (kinds[obj.kind] ?? 0) + 1;
  for (const p of problems) console.error(`${where}: ${p}`);
  errors += problems.length;
}
const summary = Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(', ');
if (errors) {
  console.error(`${file}: ${errors} error(s) in ${checked} object(s)`);
  process.exit(1);
}
if (checked === 0) {
  console.error(`${file}: no objects`);
  process.exit(1);
}
console.log(`${path.basename(file)}: ${checked} objects valid (${summary})`);
