// The operator's view, signed in with the operator token: runners, fleet utilisation, creates
// per second, 429 CAPACITY over time, the exhaustion forecast and pre-warming.

import { ApiError, Capacity, History, operator, RegionForecast, RunnerInfo } from './api';
import { chart, colors } from './charts';
import { duration, h, pct, say, table } from './dom';

function errorText(e: unknown): string {
  return e instanceof ApiError ? `${e.status} ${e.reason}: ${e.message}` : String(e);
}

export async function operatorView(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const periodSel = h('select', { id: 'period', name: 'period' },
    h('option', { value: '3600' }, 'last hour'),
    h('option', { value: '21600' }, 'last 6 hours'),
    h('option', { value: '86400' }, 'last day'),
    h('option', { value: '604800' }, 'last week'));
  const runners = h('section', { 'aria-label': 'Runners', id: 'runners' });
  const forecast = h('section', { 'aria-label': 'Forecast', id: 'forecast' });
  const charts = h('section', { 'aria-label': 'Fleet over time', id: 'fleet-charts' });
  periodSel.addEventListener('change', () => void loadHistory());
  main.replaceChildren(h('h1', {}, 'Fleet'), runners, forecast,
    h('div', { class: 'inline' }, h('label', { for: 'period' }, 'Period'), periodSel), charts);

  async function loadNow() {
    try {
      const cap = await operator.capacity();
      runners.replaceChildren(h('h2', {}, 'Runners'), runnerTable(cap, loadNow));
      forecast.replaceChildren(h('h2', {}, 'Forecast'), forecastPanel(cap),
        h('h2', {}, '429 CAPACITY by region'), refusalTable(cap));
    } catch (e) {
      runners.replaceChildren(h('p', { role: 'alert', class: 'error' }, errorText(e)));
    }
  }
  async function loadHistory() {
    const span = Number(periodSel.value);
    const to = new Date();
    const from = new Date(to.getTime() - span * 1000);
    // About 120 points whatever the period, never finer than the 10 s snapshots.
    const step = Math.max(10, Math.round(span / 120));
    try {
      charts.replaceChildren(...historyCharts(await operator.history(from, to, step),
                                              [from.getTime() / 1000, to.getTime() / 1000]));
    } catch (e) {
      charts.replaceChildren(h('p', { role: 'alert', class: 'error' }, errorText(e)));
    }
  }
  await Promise.all([loadNow(), loadHistory()]);
  const timer = setInterval(() => void loadNow(), 5000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

function runnerTable(cap: Capacity, reload: () => Promise<void>): HTMLElement {
  const rows = cap.runners.map((r: RunnerInfo) => {
    const warm = r.placements.warm, cold = r.placements.cold;
    const button = h('button', { type: 'button',
                                 'aria-label': `${r.draining ? 'Undrain' : 'Drain'} ${r.name}` },
                     r.draining ? 'Undrain' : 'Drain');
    button.addEventListener('click', async () => {
      try {
        await operator.drain(r.name, !r.draining);
        say(`${r.name} ${r.draining ? 'undrained' : 'draining'}.`);
      } catch (e) {
        say(errorText(e));
      }
      await reload();
    });
    return [r.name, r.state + (r.draining ? ' (draining)' : ''), r.region || 'default',
            `${pct(r.cpuMillis.allocated, r.cpuMillis.capacity)} cpu, ` +
            `${pct(r.memoryMb.allocated, r.memoryMb.capacity)} mem, ` +
            `${r.sandboxes.allocated}/${r.sandboxes.capacity} slots`,
            String(r.imageCache.images.length) +
              (r.imageCache.pulling.length ? ` (+${r.imageCache.pulling.length} pulling)` : ''),
            warm + cold > 0 ? `${pct(warm, warm + cold)} of ${warm + cold}` : '—', button];
  });
  return table(`${cap.runners.length} runners`, ['Runner', 'State', 'Region', 'Utilisation',
    'Cached images', 'Warm placements', ''], rows, 'Runners');
}

function refusalTable(cap: Capacity): HTMLElement {
  const r = cap.capacityRefusals;
  if (!r) return h('p', {}, 'This scheduler does not count refusals by region.');
  return table('Creates refused for capacity since the scheduler started', ['Region', 'Refused'],
    [...Object.entries(r.regions).map(([region, n]) => [region, String(n)]),
     ['all regions', String(r.total)]], '429 CAPACITY by region');
}

function describe(f: RegionForecast | null | undefined): string {
  if (!f) return 'no data yet';
  if (f.secondsLeft === undefined) {
    const insufficient = f.resources.every((r) => r.outcome === 'INSUFFICIENT_DATA');
    return insufficient ? 'not enough history yet' : 'not running out at the current trend';
  }
  if (f.secondsLeft === 0) return `out of ${f.firstResource} now`;
  return `${f.firstResource} runs out in ${duration(f.secondsLeft)} (${new Date(f.exhaustsAt!)
    .toLocaleString()})`;
}

function forecastPanel(cap: Capacity): HTMLElement {
  const fc = cap.forecast;
  if (!fc) return h('p', {}, 'No forecast: the capacity history is unavailable.');
  const items = [h('li', {}, h('strong', {}, 'Fleet: '), describe(fc.fleet))];
  for (const [region, f] of Object.entries(fc.regions)) {
    items.push(h('li', {}, h('strong', {}, `${region}: `), describe(f)));
  }
  return h('div', {}, h('ul', { 'aria-label': 'Time until capacity runs out' }, items),
    h('p', { class: 'note' }, `Method: ${fc.method}.`));
}

function historyCharts(history: History, range: [number, number]): HTMLElement[] {
  const pts = history.fleet;
  const times = pts.map((p) => Date.parse(p.time) / 1000);
  const ratio = (a: number, b: number) => (b > 0 ? (100 * a) / b : null);
  const step = history.stepSec;
  return [
    chart('Fleet utilisation', times, [
      { label: 'CPU %', values: pts.map((p) => ratio(p.cpuMillis.allocated, p.cpuMillis.capacity)),
        color: colors[0] },
      { label: 'Memory %', values: pts.map((p) => ratio(p.memoryMb.allocated, p.memoryMb.capacity)),
        color: colors[3] },
      { label: 'Slots %', values: pts.map((p) => ratio(p.sandboxSlots.allocated,
                                                       p.sandboxSlots.capacity)), color: colors[2] },
    ], '% allocated', range),
    chart('Creates per second', times, [
      { label: 'Warm', values: pts.map((p) => p.placementsWarm / step), color: colors[2] },
      { label: 'Cold', values: pts.map((p) => p.placementsCold / step), color: colors[4] },
    ], 'placements/s', range),
    chart('429 CAPACITY', times, [
      { label: 'All regions', values: pts.map((p) => p.capacityRefusals), color: colors[1] },
      // Each region's own count, on the fleet's time axis (a step without a row is absent).
      ...Object.entries(history.regions).map(([region, rpts], i) => {
        const at = new Map(rpts.map((p) => [p.time, p.capacityRefusals]));
        return { label: region, values: pts.map((p) => at.get(p.time) ?? null),
                 color: colors[(i + 2) % colors.length] };
      }),
    ], 'per step', range),
    chart('Sandboxes by state', times,
      ['RUNNING', 'HIBERNATED', 'STARTING', 'PENDING', 'DESTROYING'].map((state, i) => ({
        label: state, values: pts.map((p) => p.sandboxesByState?.[state] ?? null),
        color: colors[i % colors.length] })),
      'sandboxes', range),
    chart('Pre-warming', times, [
      { label: 'Pulls finished', values: pts.map((p) => p.pulls), color: colors[5] },
      { label: 'Cached images', values: pts.map((p) => p.cachedImages), color: colors[3] },
    ], 'count', range),
  ];
}
