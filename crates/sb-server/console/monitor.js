// Monitoring: PromQL queries as a graph and a table, saved dashboards (stored on the server,
// per user) with a time range and auto-refresh, and alerts with their silences.

import { h, fill, api, act, say, qs, table, field, fmtTime } from './lib.js';
import { lineChart, seriesName } from './chart.js';

const RANGES = [['15m', 900], ['1h', 3600], ['6h', 21600], ['24h', 86400], ['7d', 604800]];

export function render(main, [tab = 'query', arg]) {
  const tabs = [['query', 'Query'], ['dashboards', 'Dashboards'], ['alerts', 'Alerts']];
  const body = h('div', {});
  fill(main, h('h1', {}, 'Monitoring'),
    h('nav', { class: 'tabs', 'aria-label': 'Monitoring' }, tabs.map(([k, label]) =>
      h('a', { href: '#/monitor/' + k, 'aria-current': k === tab ? 'page' : false }, label))),
    body);
  if (tab === 'dashboards') return dashboards(body, arg);
  if (tab === 'alerts') return alerts(body);
  return queryPage(body, arg);
}

function rangeSelect(selected) {
  return h('select', {}, RANGES.map(([label, secs]) => h('option', { value: secs, selected: secs === selected }, label)));
}

async function queryRange(query, rangeSecs) {
  const end = Date.now() / 1000, start = end - rangeSecs;
  const step = Math.max(1, Math.ceil(rangeSecs / 300));
  const r = await api('GET', '/api/v1/query_range' + qs({ query, start: start.toFixed(3), end: end.toFixed(3), step: step + 's' }));
  return r.data.result;
}

function queryPage(box, initial) {
  const input = h('textarea', { rows: 2, class: 'code', spellcheck: 'false', autocapitalize: 'none', placeholder: 'rate(sb_http_requests_total[5m])' });
  input.value = initial || '';
  const range = rangeSelect(3600);
  const graph = h('div', { class: 'chart', id: 'query-chart' });
  const out = h('div', {});
  const error = h('p', { class: 'error', role: 'alert' });
  let chart = null;
  const run = act(async (e) => {
    e?.preventDefault();
    error.textContent = '';
    const q = input.value.trim();
    if (!q) return;
    try {
      const [series, instant] = await Promise.all([
        queryRange(q, Number(range.value)),
        api('GET', '/api/v1/query' + qs({ query: q })),
      ]);
      chart?.destroy();
      chart = lineChart(graph, series);
      graph.dataset.series = String(series.length);
      const r = instant.data;
      let rows;
      if (r.resultType === 'vector') rows = r.result.map((s) => [seriesName(s.metric), s.value[1]]);
      else if (r.resultType === 'scalar' || r.resultType === 'string') rows = [['(scalar)', r.result[1]]];
      else rows = r.result.map((s) => [seriesName(s.metric), s.values.at(-1)?.[1] ?? '']);
      fill(out, table('Values now', ['Series', 'Value'], rows, 'No series.'));
    } catch (err) {
      error.textContent = err.message;
    }
  });
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) run(e); });
  fill(box, h('form', { class: 'stack', onsubmit: run },
    field('PromQL expression', input, 'Ctrl+Enter runs it.'),
    h('div', { class: 'row' }, field('Range', range), h('button', { type: 'submit' }, 'Run query'))),
  error, h('h2', {}, 'Graph'), graph, h('h2', {}, 'Table'), out);
  if (input.value) run();
  return () => chart?.destroy();
}

function dashboards(box, selected) {
  let charts = [], timer = null, current = null;
  const listBox = h('div', {});
  const view = h('div', {});
  fill(box, listBox, view);
  const clear = () => { for (const c of charts) c?.destroy(); charts = []; clearInterval(timer); };

  async function loadList() {
    const all = await api('GET', '/v1/dashboards');
    const name = h('input', { required: true });
    fill(listBox, h('div', { class: 'row' },
      all.length ? h('ul', { class: 'plain inline-list' }, all.map((d) => h('li', {},
        h('a', { href: '#/monitor/dashboards/' + encodeURIComponent(d.name), 'aria-current': d.name === selected ? 'page' : false }, d.name)))) : h('p', { class: 'muted' }, 'No dashboards yet.'),
      h('form', { class: 'inline', onsubmit: act(async (e) => {
        e.preventDefault();
        await api('PUT', '/v1/dashboards/' + encodeURIComponent(name.value.trim()), { name: name.value.trim(), range_secs: 3600, refresh_secs: 30, panels: [] });
        location.hash = '#/monitor/dashboards/' + encodeURIComponent(name.value.trim());
      }) }, field('New dashboard', name), h('button', { type: 'submit', class: 'small' }, 'Create'))));
    current = all.find((d) => d.name === selected) || null;
    if (current) show();
  }

  async function save() {
    current = await api('PUT', '/v1/dashboards/' + encodeURIComponent(current.name), current);
  }

  function show() {
    clear();
    const d = current;
    const range = rangeSelect(d.range_secs);
    const refresh = h('select', {}, [[0, 'off'], [10, '10 s'], [30, '30 s'], [60, '1 min'], [300, '5 min']].map(([v, l]) =>
      h('option', { value: v, selected: v === d.refresh_secs }, l)));
    const panels = h('div', { class: 'panels' });
    const title = h('input', { required: true });
    const query = h('input', { required: true, class: 'code', autocapitalize: 'none', spellcheck: 'false' });
    range.addEventListener('change', act(async () => { d.range_secs = Number(range.value); await save(); draw(); }));
    refresh.addEventListener('change', act(async () => { d.refresh_secs = Number(refresh.value); await save(); schedule(); }));
    fill(view, h('h2', {}, d.name),
      h('div', { class: 'row' }, field('Range', range), field('Auto-refresh', refresh),
        h('button', { type: 'button', class: 'secondary', onclick: () => draw() }, 'Refresh now'),
        h('button', { type: 'button', class: 'danger', onclick: act(async () => {
          if (!confirm(`Delete the dashboard ${d.name}?`)) return;
          await api('DELETE', '/v1/dashboards/' + encodeURIComponent(d.name));
          location.hash = '#/monitor/dashboards';
        }) }, 'Delete dashboard')),
      panels,
      h('details', {}, h('summary', {}, 'Add a panel'), h('form', { class: 'stack', onsubmit: act(async (e) => {
        e.preventDefault();
        d.panels.push({ title: title.value.trim(), query: query.value.trim() });
        try { await save(); } catch (err) { d.panels.pop(); throw err; }
        title.value = ''; query.value = '';
        draw();
      }) }, field('Title', title), field('PromQL', query), h('button', { type: 'submit' }, 'Add panel'))));

    async function draw() {
      for (const c of charts) c?.destroy();
      charts = [];
      fill(panels, d.panels.length ? null : h('p', { class: 'muted' }, 'No panels yet.'));
      for (const [i, p] of d.panels.entries()) {
        const el = h('div', { class: 'chart' });
        panels.append(h('section', { class: 'panel', 'aria-label': p.title },
          h('div', { class: 'row spread' }, h('h3', {}, p.title),
            h('button', { type: 'button', class: 'small secondary', 'aria-label': 'Remove panel ' + p.title, onclick: act(async () => {
              d.panels.splice(i, 1);
              await save();
              draw();
            }) }, 'Remove')),
          h('code', { class: 'small muted' }, p.query), el));
        try { charts.push(lineChart(el, await queryRange(p.query, d.range_secs), { height: 200 })); } catch (err) {
          fill(el, h('p', { class: 'error' }, err.message));
        }
      }
    }
    function schedule() {
      clearInterval(timer);
      if (d.refresh_secs > 0) timer = setInterval(draw, d.refresh_secs * 1000);
    }
    draw();
    schedule();
  }

  loadList().catch((e) => say(e.message, 'error'));
  return clear;
}

function alerts(box) {
  const list = h('div', {});
  const silences = h('div', {});
  const form = h('div', {});
  fill(box, h('h2', {}, 'Alerts'), list, form, h('h2', {}, 'Silences'), silences);

  function silenceForm(a) {
    const matchers = h('textarea', { class: 'code', rows: Math.min(6, Object.keys(a.labels).length || 1), spellcheck: 'false' });
    matchers.value = Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join('\n');
    const hours = h('input', { type: 'number', min: 0.25, step: 0.25, value: 2 });
    const comment = h('input', { required: true });
    fill(form, h('form', { class: 'card stack', 'aria-label': 'Silence alert', onsubmit: act(async (e) => {
      e.preventDefault();
      const ms = matchers.value.split('\n').map((x) => x.trim()).filter(Boolean);
      await api('POST', '/v1/alerts/silences', { matchers: ms, duration_secs: Math.round(Number(hours.value) * 3600), comment: comment.value });
      say('Silenced.');
      fill(form);
      await load();
    }) }, h('h3', {}, 'Silence ', a.labels.alertname || 'alert'),
    field('Matchers, one per line (all must match)', matchers), field('For hours', hours), field('Comment', comment),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Silence'), h('button', { type: 'button', class: 'secondary', onclick: () => fill(form) }, 'Cancel'))));
    comment.focus();
  }

  async function load() {
    const [as, ss] = await Promise.all([api('GET', '/v1/alerts'), api('GET', '/v1/alerts/silences')]);
    fill(list, table('Alerts', ['Alert', 'State', 'Labels', 'Value', 'Since', ''], as.map((a) => [
      h('strong', {}, a.labels.alertname || '—'),
      h('span', { class: 'pill ' + (a.state === 'firing' ? 'bad' : a.state === 'pending' ? 'warn' : 'off') }, a.state + (a.silenced ? ' (silenced)' : '')),
      h('code', { class: 'small' }, Object.entries(a.labels).filter(([k]) => k !== 'alertname').map(([k, v]) => `${k}=${v}`).join(' ')),
      String(a.value), fmtTime(a.active_at_ms),
      a.silenced ? '' : h('button', { type: 'button', class: 'small', onclick: () => silenceForm(a) }, 'Silence…'),
    ]), 'No alerts: every rule is quiet.'));
    fill(silences, table('Silences', ['Matchers', 'State', 'Ends', 'By', 'Comment', ''], ss.map((s) => [
      h('code', { class: 'small' }, s.matchers.join(', ')), s.state, fmtTime(s.ends_at_ms), s.created_by, s.comment,
      s.state === 'expired' ? '' : h('button', { type: 'button', class: 'small secondary', onclick: act(async () => {
        await api('DELETE', '/v1/alerts/silences/' + s.id);
        await load();
      }) }, 'Expire'),
    ]), 'No silences.'));
  }
  load().catch((e) => say(e.message, 'error'));
  const timer = setInterval(() => load().catch(() => {}), 10000);
  return () => clearInterval(timer);
}
