// Devices: the fleet (status, last seen, health, firmware), a device's page (twin with the
// desired state editable, commands and their results, a live telemetry chart), rollouts.

import { h, fill, api, act, say, qs, table, field, ago, fmtTime } from './lib.js';
import { lineChart } from './chart.js';

export function render(main, [deviceId]) {
  return deviceId ? devicePage(main, deviceId) : fleetPage(main);
}

function statusCell(d) {
  if (d.revoked) return h('span', { class: 'pill off' }, 'revoked');
  return h('span', { class: 'pill ' + (d.online ? 'on' : 'off') }, d.online ? 'online' : 'offline');
}

function fleetPage(main) {
  const fleet = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const rollouts = h('div', {});
  const name = h('input', { required: true, autocapitalize: 'none' });
  const group = h('input', {});
  const secret = h('div', { 'aria-live': 'polite' });
  fill(main, h('h1', {}, 'Devices'), fleet,
    h('details', {}, h('summary', {}, 'Register a device'),
      h('form', { class: 'stack', onsubmit: act(async (e) => {
        e.preventDefault();
        const d = await api('POST', '/v1/devices', { name: name.value.trim(), group: group.value.trim() });
        fill(secret, h('div', { class: 'notice' }, h('p', {}, `Registered ${d.name}. Its MQTT user name is `, h('code', {}, d.id),
          ' and its secret, shown only now, is:'), h('pre', { class: 'secret' }, d.secret)));
        name.value = '';
        await load();
      }) }, field('Name', name), field('Group', group), h('button', { type: 'submit' }, 'Register'), secret)),
    h('h2', {}, 'Firmware rollouts'), rollouts);

  async function load() {
    const list = await api('GET', '/v1/devices');
    fill(fleet, table('Devices', ['Device', 'Group', 'Status', 'Last seen', 'Health', 'Firmware'],
      list.map((d) => [
        h('a', { href: '#/devices/' + d.id }, d.name), d.group || '—', statusCell(d),
        d.online ? 'now' : ago(d.last_seen_at_ms),
        h('span', { class: 'pill ' + (d.health === 'healthy' ? 'on' : d.health === 'unhealthy' ? 'bad' : 'off') }, d.health || 'unknown'),
        d.firmware ?? '—',
      ]), 'No devices yet: register one below, or run `sb device simulate`.'));
  }

  async function loadRollouts() {
    try {
      const list = await api('GET', '/v1/rollouts');
      fill(rollouts, table('Rollouts', ['Version', 'Group', 'State', 'Progress', 'Failed', 'Updated'],
        list.map((r) => [r.version, r.group || 'all', r.state + (r.reason ? ` (${r.reason})` : ''),
          h('span', {}, h('progress', { max: r.devices_total || 1, value: r.updated, 'aria-label': `${r.updated} of ${r.devices_total} updated` }),
            ` ${r.updated}/${r.devices_total} · batch ${r.current_batch}/${r.batches}`),
          String(r.failed), fmtTime(r.updated_at_ms)]), 'No rollouts.'));
    } catch (e) {
      fill(rollouts, h('p', { class: 'muted' }, e.status === 403 ? 'Rollouts are for administrators.' : e.message));
    }
  }

  const tick = async () => { try { await load(); await loadRollouts(); } catch (e) { say(e.message, 'error'); } };
  tick();
  const timer = setInterval(tick, 5000);
  return () => clearInterval(timer);
}

function devicePage(main, id) {
  const info = h('div', {});
  const twinBox = h('div', {});
  const chartBox = h('div', { class: 'chart', id: 'telemetry-chart' });
  const chartNote = h('p', { class: 'muted small', 'aria-live': 'polite' });
  const commandBox = commandForm(id);
  fill(main, h('p', {}, h('a', { href: '#/devices' }, '← All devices')), info,
    h('section', { 'aria-labelledby': 'tele-h' }, h('h2', { id: 'tele-h' }, 'Telemetry (last 15 minutes, live)'), chartBox, chartNote),
    h('div', { class: 'cols' },
      h('section', { 'aria-labelledby': 'twin-h' }, h('h2', { id: 'twin-h' }, 'Twin'), twinBox),
      h('section', { 'aria-labelledby': 'cmd-h' }, h('h2', { id: 'cmd-h' }, 'Call a command'), commandBox)));

  let chart = null, editing = false;

  async function loadInfo() {
    const d = await api('GET', '/v1/devices/' + id);
    fill(info, h('h1', {}, d.name, ' ', statusCell(d)),
      h('dl', { class: 'facts' },
        h('dt', {}, 'MQTT user name'), h('dd', {}, h('code', {}, d.id)),
        h('dt', {}, 'Group'), h('dd', {}, d.group || '—'),
        h('dt', {}, 'Last seen'), h('dd', {}, d.online ? 'now' : ago(d.last_seen_at_ms)),
        h('dt', {}, 'Health'), h('dd', {}, d.health || 'unknown',
          d.health_report ? h('code', { class: 'small' }, ' ' + JSON.stringify(d.health_report)) : null),
        h('dt', {}, 'Owner'), h('dd', {}, d.owner)));
  }

  async function loadTwin() {
    if (editing) return;
    const t = await api('GET', `/v1/devices/${id}/twin`);
    const desired = h('textarea', { rows: 8, class: 'code', spellcheck: 'false' });
    desired.value = JSON.stringify(t.desired, null, 2);
    desired.addEventListener('focus', () => { editing = true; });
    const error = h('p', { class: 'error', role: 'alert' });
    fill(twinBox,
      h('form', { class: 'stack', onsubmit: act(async (e) => {
        e.preventDefault();
        let value;
        try { value = JSON.parse(desired.value); } catch (err) { error.textContent = 'Not JSON: ' + err.message; return; }
        if (typeof value !== 'object' || Array.isArray(value) || value === null) { error.textContent = 'The desired state is a JSON object.'; return; }
        // A key set to null is deleted; keys no longer present are removed.
        for (const k of Object.keys(t.desired)) if (!(k in value)) value[k] = null;
        await api('PATCH', `/v1/devices/${id}/twin`, { desired: value });
        editing = false;
        say('Desired state saved; the device is told.');
        await loadTwin();
      }) }, field(`Desired (version ${t.desired_version})`, desired), error,
      h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save desired state'),
        h('button', { type: 'button', class: 'secondary', onclick: () => { editing = false; loadTwin(); } }, 'Discard changes'))),
      h('h3', {}, `Reported (version ${t.reported_version})`), h('pre', { class: 'code' }, JSON.stringify(t.reported, null, 2)),
      Object.keys(t.delta || {}).length ? [h('h3', {}, 'Not yet applied'), h('pre', { class: 'code' }, JSON.stringify(t.delta, null, 2))] : null);
  }

  async function loadChart() {
    const end = Date.now() / 1000, start = end - 900;
    const q = `{device_id="${id}", __name__!~"device_online|device_healthy"}`;
    const r = await api('GET', '/api/v1/query_range' + qs({ query: q, start: start.toFixed(3), end: end.toFixed(3), step: '5s' }));
    chart?.destroy();
    chart = lineChart(chartBox, r.data.result);
    const points = r.data.result.reduce((n, s) => n + s.values.length, 0);
    chartBox.dataset.points = String(points);
    chartNote.textContent = `${r.data.result.length} series, ${points} points, updated ${new Date().toLocaleTimeString()}`;
  }

  const tick = async () => {
    try { await Promise.all([loadInfo(), loadTwin(), loadChart()]); } catch (e) { say(e.message, 'error'); }
  };
  tick();
  const timer = setInterval(tick, 5000);
  return () => { clearInterval(timer); chart?.destroy(); };
}

function commandForm(id) {
  const method = h('input', { required: true, placeholder: 'reboot', autocapitalize: 'none' });
  const payload = h('textarea', { rows: 3, class: 'code', spellcheck: 'false' });
  payload.value = '{}';
  const timeout = h('input', { type: 'number', min: 1, max: 300, value: 10 });
  const result = h('div', { 'aria-live': 'polite' });
  return h('form', { class: 'stack', onsubmit: act(async (e) => {
    e.preventDefault();
    let body;
    try { body = JSON.parse(payload.value || 'null'); } catch (err) { fill(result, h('p', { class: 'error' }, 'Payload is not JSON: ' + err.message)); return; }
    fill(result, h('p', { class: 'muted' }, 'Sent; waiting for the device…'));
    const c = await api('POST', `/v1/devices/${id}/commands`, { method: method.value.trim(), payload: body, timeout_secs: Number(timeout.value), wait: true });
    fill(result, h('dl', { class: 'facts' },
      h('dt', {}, 'State'), h('dd', {}, h('strong', { class: 'command-state' }, c.state)),
      h('dt', {}, 'Status'), h('dd', {}, c.status ?? '—'),
      h('dt', {}, 'Result'), h('dd', {}, h('pre', { class: 'code' }, c.result === null || c.result === undefined ? '—' : JSON.stringify(c.result, null, 2)))));
  }) }, field('Method', method), field('Payload (JSON)', payload), field('Timeout (seconds)', timeout),
  h('button', { type: 'submit' }, 'Call'), result);
}

