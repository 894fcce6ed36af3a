// Account: profile, password, sessions (revoke), API tokens (create, shown once; revoke).

import { session, h, fill, api, act, say, table, field, fmtTime, ago } from './lib.js';

export function render(main) {
  const profile = h('div', {});
  const sessions = h('div', {});
  const tokens = h('div', {});
  const created = h('div', { 'aria-live': 'polite' });
  fill(main, h('h1', {}, 'Account'),
    h('div', { class: 'cols' },
      h('section', { 'aria-labelledby': 'p-h' }, h('h2', { id: 'p-h' }, 'Profile'), profile),
      h('section', { 'aria-labelledby': 'pw-h' }, h('h2', { id: 'pw-h' }, 'Password'), passwordForm())),
    h('section', { 'aria-labelledby': 's-h' }, h('h2', { id: 's-h' }, 'Sessions'),
      h('p', { class: 'muted' }, 'Everywhere you are logged in. Revoking one logs that place out at once.'), sessions),
    h('section', { 'aria-labelledby': 't-h' }, h('h2', { id: 't-h' }, 'API tokens'),
      h('p', { class: 'muted' }, 'For scripts and the sb client. A token is shown once, when it is made.'),
      tokenForm(), created, tokens));

  function drawProfile() {
    const u = session.user;
    const display = h('input', { value: u.display_name });
    const status = h('input', { value: u.status_text });
    fill(profile, h('form', { class: 'stack', onsubmit: act(async (e) => {
      e.preventDefault();
      session.user = await api('PATCH', '/v1/me', { display_name: display.value, status_text: status.value });
      say('Profile saved.');
    }) }, h('p', {}, 'Username ', h('strong', {}, u.username), ' · role ', u.role),
    field('Display name', display), field('Status', status), h('button', { type: 'submit' }, 'Save profile')));
  }

  async function loadSessions() {
    const list = await api('GET', '/v1/sessions');
    fill(sessions, table('Sessions', ['Client', 'From', 'Started', 'Last used', ''], list.filter((s) => !s.revoked).map((s) => [
      s.client || 'unknown client', s.ip, fmtTime(s.created_at_ms), ago(s.last_used_at_ms),
      s.current ? h('em', {}, 'this browser') : h('button', { type: 'button', class: 'small danger', onclick: act(async () => {
        await api('DELETE', '/v1/sessions/' + s.id);
        say('Session revoked.');
        await loadSessions();
      }) }, 'Revoke'),
    ])));
  }

  async function loadTokens() {
    const list = await api('GET', '/v1/tokens');
    fill(tokens, table('API tokens', ['Name', 'Scopes', 'Created', 'Expires', 'Last used', ''], list.filter((t) => !t.revoked).map((t) => [
      t.name, t.scopes.join(', ') || 'all', fmtTime(t.created_at_ms), t.expires_at_ms ? fmtTime(t.expires_at_ms) : 'never', ago(t.last_used_at_ms),
      h('button', { type: 'button', class: 'small danger', onclick: act(async () => {
        await api('DELETE', '/v1/tokens/' + t.id);
        say(`Token ${t.name} revoked.`);
        await loadTokens();
      }) }, 'Revoke'),
    ]), 'No API tokens.'));
  }

  function tokenForm() {
    const name = h('input', { required: true });
    const scopes = h('input', { placeholder: 'e.g. read, write, metrics:write' });
    const days = h('input', { type: 'number', min: 0, value: 90 });
    return h('details', {}, h('summary', {}, 'New token'), h('form', { class: 'stack', onsubmit: act(async (e) => {
      e.preventDefault();
      const body = { name: name.value.trim(), scopes: scopes.value.split(',').map((s) => s.trim()).filter(Boolean) };
      if (Number(days.value) > 0) body.expires_in_secs = Number(days.value) * 86400;
      const t = await api('POST', '/v1/tokens', body);
      fill(created, h('div', { class: 'notice' }, h('p', {}, `Token ${t.info.name}: copy it now, it is not shown again.`),
        h('pre', { class: 'secret' }, t.token)));
      name.value = '';
      await loadTokens();
    }) }, field('Name', name), field('Scopes (comma-separated; empty: everything you can do)', scopes),
    field('Expires after days (0: never)', days), h('button', { type: 'submit' }, 'Create token')));
  }

  drawProfile();
  Promise.all([loadSessions(), loadTokens()]).catch((e) => say(e.message, 'error'));
}

function passwordForm() {
  const current = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { type: 'password', autocomplete: 'new-password', required: true });
  return h('form', { class: 'stack', onsubmit: act(async (e) => {
    e.preventDefault();
    await api('POST', '/v1/me/password', { current_password: current.value, new_password: next.value });
    current.value = ''; next.value = '';
    say('Password changed; your other sessions were logged out.');
  }) }, field('Current password', current), field('New password', next), h('button', { type: 'submit' }, 'Change password'));
}
