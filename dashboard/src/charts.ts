// Time-series charts with uPlot: small (about 50 KB), fast on thousands of points, canvas based,
// no dependencies. Each chart is a <figure role="img"> whose label says what it shows and how
// many points it has, so screen readers (and tests) can tell.

import uPlot from 'uplot';

import { h } from './dom';

export interface Line {
  label: string;
  values: (number | null)[];
  color: string;
}

const charts = new Set<uPlot>();
let resizeHooked = false;

function widthOf(el: HTMLElement): number {
  return Math.max(280, Math.min(el.clientWidth || 600, 1200) - 8);
}

// `range`: the period shown, [from, to] in unix seconds (default: the data's own extent).
export function chart(title: string, times: number[], lines: Line[], yLabel: string,
                      range?: [number, number]): HTMLElement {
  const id = `chart-${Math.random().toString(36).slice(2, 8)}`;
  const figure = h('figure', {
    class: 'chart',
    role: 'img',
    'aria-labelledby': id,
    'data-points': String(times.length),
  });
  const n = times.length;
  figure.append(h('figcaption', { id }, `${title} (${n} point${n === 1 ? '' : 's'})`));
  const plotHost = h('div', {});
  figure.append(plotHost);
  if (times.length === 0) {
    plotHost.append(h('p', { class: 'empty' }, 'No data in this period yet.'));
    return figure;
  }
  // Rendered once the figure is in the document (uPlot needs its width).
  queueMicrotask(() => {
    const opts: uPlot.Options = {
      width: widthOf(figure),
      height: 220,
      series: [{}, ...lines.map((l) => ({ label: l.label, stroke: l.color, width: 2 }))],
      axes: [{}, { label: yLabel }],
      scales: { x: range ? { time: true, range: () => range } : { time: true } },
    };
    const plot = new uPlot(opts, [times, ...lines.map((l) => l.values)] as uPlot.AlignedData,
                           plotHost);
    charts.add(plot);
    if (!resizeHooked) {
      resizeHooked = true;
      window.addEventListener('resize', () => {
        for (const c of charts) {
          if (!document.body.contains(c.root)) {
            charts.delete(c);
            continue;
          }
          c.setSize({ width: widthOf(c.root.parentElement!.parentElement!), height: 220 });
        }
      });
    }
  });
  return figure;
}

export const colors = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2'];
