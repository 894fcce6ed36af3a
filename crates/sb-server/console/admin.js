// Admin: users (role, disable), invites, and the audit log with its hash-chain verification.

import { session, h, fill, api, act, say, qs, table, field, fmtTime } from './lib.js';

export function render(main) {
  const users = h('div', {});
  const invite = h('div', { 'aria-live': 'polite' });
  const audit = h('div', {});
  const verify = h('div', { 'aria-live': 'polite' });
  fill(main, h('h1', {}, 'Administration'),
    h('section', { 'aria-labelledby': 'users-h' }, h('h2', { id: 'users-h' }, 'Users'), users),
    h('section', { 'aria-labelledby': 'inv-h' }, h('h2', { id: 'inv-h' }, 'Invites'),
      h('p', { class: 'muted' }, 'An invite lets one person create an account; it expires unused.'),
      h('button', { type: 'button', onclick: act(async () => {
        const i = await api('POST', '/v1/admin/invites', {});
        fill(invite, h('div', { class: 'notice' }, h('p', {}, 'Give this invite to the new user (shown only now; it expires ', fmtTime(i.expires_at_ms), '):'),
          h('pre', { class: 'secret' }, i.token)));
      }) }, 'Create an invite'), invite),
    h('section', { 'aria-labelledby': 'audit-h' }, h('h2', { id: 'audit-h' }, 'Audit log'),
      h('div', { class: 'row' }, h('button', { type: 'button', onclick: act(async () => {
        const r = await api('GET', '/v1/admin/audit/verify');
        fill(verify, r.ok
          ? h('p', { class: 'ok' }, `The chain holds: ${r.checked} records verified.`)
          : h('p', { class: 'error' }, `The chain is broken at record ${r.first_broken_seq} (${r.problem}); ${r.checked} checked.`));
      }) }, 'Verify the chain'), verify), audit));

  async function loadUsers() {
    const list = await api('GET', '/v1/admin/users');
    fill(users, table('Users', ['User', 'Role', 'Created', 'Status'], list.map((u) => {
      const self = u.id === session.user.id;
      const role = h('select', { 'aria-label': 'Role of ' + u.username, disabled: self },
        ['user', 'admin'].map((r) => h('option', { value: r, selected: u.role === r }, r)));
      role.addEventListener('change', act(async () => {
        await api('PATCH', '/v1/admin/users/' + u.id, { role: role.value });
        say(`${u.username} is now ${role.value}.`);
      }));
      return [u.username, role, fmtTime(u.created_at_ms),
        self ? 'you' : h('button', { type: 'button', class: 'small ' + (u.disabled ? '' : 'danger'), onclick: act(async () => {
          await api('PATCH', '/v1/admin/users/' + u.id, { disabled: !u.disabled });
          say(`${u.username} ${u.disabled ? 'enabled' : 'disabled'}.`);
          await loadUsers();
        }) }, u.disabled ? 'Enable' : 'Disable')];
    })));
  }

  const actor = h('input', { autocapitalize: 'none' });
  const action = h('input', { autocapitalize: 'none' });
  const rows = h('div', {});
  let after = 0;
  async function loadAudit(reset) {
    if (reset) after = 0;
    const list = await api('GET', '/v1/admin/audit' + qs({ actor: actor.value.trim(), action: action.value.trim(), after_seq: after || undefined, limit: 50 }));
    if (list.length) after = list[list.length - 1].seq;
    fill(rows, table('Audit records', ['#', 'When', 'Actor', 'Action', 'Target', 'From'], list.map((e) =>
      [String(e.seq), fmtTime(e.at_ms), e.actor, e.action, e.target, e.ip]), 'No more records.'));
  }
  fill(audit, h('form', { class: 'inline', onsubmit: act(async (e) => { e.preventDefault(); await loadAudit(true); }) },
    field('Actor', actor), field('Action starts with', action), h('button', { type: 'submit', class: 'small' }, 'Filter'),
    h('button', { type: 'button', class: 'small secondary', onclick: act(() => loadAudit(false)) }, 'Next page')), rows);

  Promise.all([loadUsers(), loadAudit(true)]).catch((e) => say(e.message, 'error'));
}
