// The console's shell: session, navigation, and a hash router that hands each page to its
// module. Pages render into <main> and return a function that stops whatever they started.

import { session, h, fill, api, act, say, whenLoggedOut, connect, disconnect, field, onFrame } from './lib.js';
import * as account from './account.js';
import * as chat from './chat.js';
import * as devices from './devices.js';
import * as files from './files.js';
import * as monitor from './monitor.js';
import * as admin from './admin.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const menu = document.getElementById('menu-toggle');

const pages = [
  { path: 'chat', label: 'Chat', module: chat },
  { path: 'devices', label: 'Devices', module: devices },
  { path: 'files', label: 'Files', module: files },
  { path: 'monitor', label: 'Monitoring', module: monitor },
  { path: 'admin', label: 'Admin', module: admin, admin: true },
  { path: 'account', label: 'Account', module: account },
];

let stop = null;

function route() {
  const [name, ...rest] = (location.hash.replace(/^#\/?/, '') || '').split('/').map(decodeURIComponent);
  if (typeof stop === 'function') stop();
  stop = null;
  if (!session.user) {
    if (name === 'register') registerPage(); else loginPage();
    return;
  }
  const page = pages.find((p) => p.path === name) || pages[0];
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.page === page.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = page.label + ' · Switchboard';
  fill(main);
  stop = page.module.render(main, rest);
  nav.classList.remove('open');
  menu.setAttribute('aria-expanded', 'false');
}

function showNav() {
  const links = pages.filter((p) => !p.admin || session.user.role === 'admin')
    .map((p) => h('a', { href: '#/' + p.path, 'data-page': p.path }, p.label));
  fill(nav, links, h('span', { class: 'who' }, session.user.username),
    h('button', { type: 'button', class: 'link', onclick: act(logout) }, 'Log out'));
  nav.hidden = false;
  menu.hidden = false;
}

function hideNav() {
  fill(nav);
  nav.hidden = true;
  menu.hidden = true;
}

async function loggedIn(s) {
  session.user = s.user;
  session.csrf = s.csrf;
  showNav();
  connect();
  if (!location.hash || location.hash.startsWith('#/login') || location.hash.startsWith('#/register')) {
    location.hash = '#/chat';
  } else {
    route();
  }
}

function forget() {
  session.user = null;
  session.csrf = null;
  disconnect();
  hideNav();
}

async function logout() {
  try { await api('POST', '/v1/console/logout'); } finally {
    forget();
    location.hash = '#/login';
    route();
    say('Logged out.');
  }
}

function loginPage() {
  document.title = 'Log in · Switchboard';
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'card narrow', onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = '';
    try {
      const s = await api('POST', '/v1/console/login', { username: username.value, password: password.value });
      password.value = '';
      await loggedIn(s);
    } catch (err) {
      error.textContent = err.message;
    }
  } },
  h('h1', {}, 'Log in'),
  field('Username', username), field('Password', password), error,
  h('button', { type: 'submit' }, 'Log in'),
  h('p', { class: 'muted' }, 'New here with a setup token or an invite? ', h('a', { href: '#/register' }, 'Create an account')));
  fill(main, form);
  username.focus();
}

function registerPage() {
  document.title = 'Create an account · Switchboard';
  const username = h('input', { autocomplete: 'username', required: true, autocapitalize: 'none' });
  const password = h('input', { type: 'password', autocomplete: 'new-password', required: true, minlength: 8 });
  const token = h('input', { autocomplete: 'off' });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'card narrow', onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = '';
    const t = token.value.trim();
    const body = { username: username.value, password: password.value };
    if (t.startsWith('sbsetup_')) body.setup_token = t; else if (t) body.invite = t;
    try {
      await api('POST', '/v1/auth/register', body);
      const s = await api('POST', '/v1/console/login', { username: username.value, password: password.value });
      password.value = '';
      await loggedIn(s);
      say('Welcome, ' + s.user.username + '.');
    } catch (err) {
      error.textContent = err.message;
    }
  } },
  h('h1', {}, 'Create an account'),
  field('Username', username), field('Password', password),
  field('Setup token or invite', token, 'The setup token is in the server\'s data directory (setup-token); an invite comes from an administrator.'),
  error, h('button', { type: 'submit' }, 'Create account'),
  h('p', { class: 'muted' }, h('a', { href: '#/login' }, 'Back to log in')));
  fill(main, form);
  username.focus();
}

menu.addEventListener('click', () => {
  const open = nav.classList.toggle('open');
  menu.setAttribute('aria-expanded', String(open));
});
window.addEventListener('hashchange', route);
// Errors the server reports on the socket (a message refused, say) are shown, not dropped.
onFrame('error', (f) => say(f.message, 'error'));
whenLoggedOut(() => {
  forget();
  say('Your session ended; log in again.', 'error');
  location.hash = '#/login';
  route();
});

(async () => {
  try {
    const s = await api('GET', '/v1/console/session');
    await loggedIn(s);
  } catch {
    forget();
    route();
  }
})();
