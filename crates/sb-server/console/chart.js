// Time-series charts (uPlot, vendored) from Prometheus-style matrices.

import uPlot from './vendor/uPlot.esm.js';
import { h } from './lib.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777'];

/** A series' display name: its metric name and labels. */
export function seriesName(metric) {
  const { __name__: name = '', ...rest } = metric;
  const labels = Object.entries(rest).map(([k, v]) => `${k}="${v}"`).join(', ');
  return labels ? `${name}{${labels}}` : name || '{}';
}

/** Draws `result` (a matrix: [{metric, values: [[t, "v"], …]}]) into `el`; returns the chart
 *  (or null when there is nothing to draw). Call .destroy() on it when done. */
export function lineChart(el, result, { height = 260 } = {}) {
  el.replaceChildren();
  if (!result.length) {
    el.append(h('p', { class: 'muted' }, 'No data in this range.'));
    return null;
  }
  const times = [...new Set(result.flatMap((s) => s.values.map((v) => v[0])))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const data = [times];
  for (const s of result) {
    const col = new Array(times.length).fill(null);
    for (const [t, v] of s.values) col[index.get(t)] = Number(v);
    data.push(col);
  }
  // The content box: the container's width less its padding.
  const inner = () => {
    const cs = getComputedStyle(el);
    return el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  };
  const width = Math.max(240, inner() || 600);
  const chart = new uPlot({
    width,
    height,
    series: [{}, ...result.map((s, i) => ({
      label: seriesName(s.metric),
      stroke: COLORS[i % COLORS.length],
      width: 1.5,
      spanGaps: false,
    }))],
    axes: [{}, { size: 60 }],
    legend: { live: true },
  }, data, el);
  el.setAttribute('role', 'img');
  el.setAttribute('aria-label', `Chart of ${result.length} series over ${times.length} points`);
  const resize = () => chart.setSize({ width: Math.max(240, inner()), height });
  const observer = new ResizeObserver(resize);
  observer.observe(el);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => { observer.disconnect(); destroy(); };
  return chart;
}
