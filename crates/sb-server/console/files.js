// Files: spaces, folders, drag-and-drop upload with progress, download, versions and restore,
// trash, sharing (space members and expiring links). Changes by others show up live.

import { h, fill, api, act, say, qs, upload, onFrame, send, table, field, fmtBytes, fmtTime } from './lib.js';

export function render(main, [spaceArg, ...folderParts]) {
  const state = { space: spaceArg || '', folder: '/' + folderParts.filter(Boolean).join('/') };
  const spacesSel = h('select', { 'aria-label': 'Space' });
  const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Folder' });
  const listing = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const detail = h('section', { class: 'detail', 'aria-live': 'polite' });
  const fileInput = h('input', { type: 'file', multiple: true, class: 'sr-only', id: 'file-upload' });
  const progress = h('div', { class: 'uploads' });
  const drop = h('div', { class: 'dropzone', tabindex: 0, role: 'button', 'aria-describedby': 'drop-help',
    onclick: () => fileInput.click(),
    onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } } },
  h('strong', {}, 'Drop files here'), h('span', { id: 'drop-help', class: 'muted' }, ' or press to choose files to upload into this folder'));
  const shareUser = h('input', { autocapitalize: 'none' });
  const shareAccess = h('select', {}, h('option', { value: 'read' }, 'read only'), h('option', { value: 'write' }, 'read and write'));
  const newSpace = h('input', {});

  fill(main, h('h1', {}, 'Files'),
    h('div', { class: 'row' }, field('Space', spacesSel), crumbs),
    drop, fileInput, progress,
    h('div', { class: 'cols wide-left' }, listing, detail),
    h('div', { class: 'cols' },
      h('details', {}, h('summary', {}, 'Share this space'), h('form', { class: 'stack', onsubmit: act(async (e) => {
        e.preventDefault();
        await api('PUT', `/v1/files/spaces/${state.space}/members`, { username: shareUser.value.trim(), access: shareAccess.value });
        say(`Shared with ${shareUser.value.trim()} (${shareAccess.value}).`);
        shareUser.value = '';
      }) }, field('Username', shareUser), field('Access', shareAccess), h('button', { type: 'submit' }, 'Share'))),
      h('details', {}, h('summary', {}, 'New space'), h('form', { class: 'stack', onsubmit: act(async (e) => {
        e.preventDefault();
        const s = await api('POST', '/v1/files/spaces', { name: newSpace.value.trim() });
        newSpace.value = '';
        location.hash = '#/files/' + s.id;
      }) }, field('Name', newSpace), h('button', { type: 'submit' }, 'Create space')))));

  const go = (folder) => { location.hash = '#/files/' + state.space + folder.split('/').map(encodeURIComponent).join('/'); };
  const spaceQ = () => ({ space: state.space });

  async function loadSpaces() {
    const spaces = await api('GET', '/v1/files/spaces');
    if (!state.space) state.space = (spaces.find((s) => s.personal) || spaces[0])?.id || '';
    fill(spacesSel, spaces.map((s) => h('option', { value: s.id, selected: s.id === state.space },
      s.personal ? 'My files' : `${s.name} (${s.access})`)));
    send({ type: 'files_watch', id: 'watch', space: state.space });
  }
  spacesSel.addEventListener('change', () => { location.hash = '#/files/' + spacesSel.value; });

  async function load() {
    const all = await api('GET', '/v1/files' + qs({ ...spaceQ(), folder: state.folder === '/' ? undefined : state.folder }));
    const prefix = state.folder === '/' ? '/' : state.folder + '/';
    const folders = new Set();
    const here = [];
    for (const f of all) {
      if (!f.path.startsWith(prefix)) continue;
      const rest = f.path.slice(prefix.length);
      const slash = rest.indexOf('/');
      if (slash >= 0) folders.add(rest.slice(0, slash)); else here.push(f);
    }
    const parts = state.folder.split('/').filter(Boolean);
    fill(crumbs, h('a', { href: '#', onclick: (e) => { e.preventDefault(); go(''); } }, 'Top'),
      parts.map((p, i) => [' / ', h('a', { href: '#', onclick: (e) => { e.preventDefault(); go('/' + parts.slice(0, i + 1).join('/')); } }, p)]));
    const rows = [
      ...[...folders].sort().map((name) => [h('a', { href: '#', class: 'folder', onclick: (e) => { e.preventDefault(); go(prefix + name); } }, name + '/'), '—', '—', '—', '']),
      ...here.sort((a, b) => a.path.localeCompare(b.path)).map((f) => [
        h('a', { href: '#', onclick: (e) => { e.preventDefault(); showFile(f); } }, f.path.slice(prefix.length)),
        fmtBytes(f.size), String(f.version), f.deleted ? 'in the trash' : fmtTime(f.modified_at_ms),
        f.deleted ? h('button', { type: 'button', class: 'small', onclick: act(() => restore(f.path)) }, 'Restore')
          : h('a', { class: 'button small', href: '/v1/files/content' + qs({ ...spaceQ(), path: f.path }), download: f.path.split('/').pop() }, 'Download'),
      ]),
    ];
    fill(listing, table('Files', ['Name', 'Size', 'Version', 'Modified', ''], rows, 'This folder is empty: drop files above.'));
  }

  async function restore(path, version) {
    const f = await api('POST', '/v1/files/restore', { space: state.space, path, version });
    say(`Restored ${path}${version ? ' to version ' + version : ''}.`);
    await load();
    if (detail.dataset.path === path) await showFile(f);
  }

  async function showFile(f) {
    const versions = await api('GET', '/v1/files/versions' + qs({ ...spaceQ(), path: f.path }));
    const linkOut = h('div', { 'aria-live': 'polite' });
    const days = h('input', { type: 'number', min: 1, max: 365, value: 7 });
    detail.dataset.path = f.path;
    fill(detail, h('h2', {}, f.path),
      h('div', { class: 'row' },
        h('a', { class: 'button', href: '/v1/files/content' + qs({ ...spaceQ(), path: f.path }), download: f.path.split('/').pop() }, 'Download'),
        f.deleted ? null : h('button', { type: 'button', class: 'danger', onclick: act(async () => {
          await api('DELETE', '/v1/files' + qs({ ...spaceQ(), path: f.path }));
          say(`${f.path} moved to the trash.`);
          fill(detail);
          await load();
        }) }, 'Move to trash')),
      h('h3', {}, 'Versions'),
      table('Versions', ['Version', 'Size', 'When', 'By', ''], versions.map((v) => [String(v.version), fmtBytes(v.size), fmtTime(v.created_at_ms), v.device || v.created_by,
        h('span', { class: 'row' },
          h('a', { class: 'button small secondary', href: '/v1/files/content' + qs({ ...spaceQ(), path: f.path, version: v.version }), download: '' }, 'Download'),
          v.version === f.version && !f.deleted ? null : h('button', { type: 'button', class: 'small', onclick: act(() => restore(f.path, v.version)) }, 'Restore'))])),
      h('h3', {}, 'Share a link'),
      h('form', { class: 'inline', onsubmit: act(async (e) => {
        e.preventDefault();
        const l = await api('POST', '/v1/files/links', { space: state.space, path: f.path, expires_in_secs: Number(days.value) * 86400 });
        const url = location.origin + l.url_path;
        fill(linkOut, h('p', {}, 'Anyone with this link can download this version until ', fmtTime(l.expires_at_ms), ':'),
          h('input', { readonly: true, value: url, 'aria-label': 'Link', class: 'wide', onfocus: (ev) => ev.target.select() }));
      }) }, field('Days', days), h('button', { type: 'submit' }, 'Make link')), linkOut);
  }

  async function send1(file) {
    const path = (state.folder === '/' ? '' : state.folder) + '/' + file.name;
    const bar = h('progress', { max: 100, value: 0, 'aria-label': `Uploading ${file.name}` });
    const text = h('span', { class: 'small' }, ` ${file.name}: starting…`);
    const row = h('div', { class: 'upload' }, bar, text);
    progress.append(row);
    try {
      await upload('PUT', '/v1/files/content' + qs({ ...spaceQ(), path }), file, (done, total) => {
        bar.value = Math.round(100 * done / total);
        text.textContent = ` ${file.name}: ${fmtBytes(done)} of ${fmtBytes(total)}`;
      });
      bar.value = 100;
      text.textContent = ` ${file.name}: uploaded`;
      setTimeout(() => row.remove(), 4000);
      await load();
    } catch (err) {
      text.textContent = ` ${file.name}: ${err.message}`;
      row.classList.add('error');
    }
  }
  const sendAll = async (files) => { for (const f of files) await send1(f); };

  fileInput.addEventListener('change', () => { sendAll([...fileInput.files]); fileInput.value = ''; });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); sendAll([...e.dataTransfer.files]); });

  const stopWatch = onFrame('files_changed', (f) => { if (f.space === state.space) load().catch(() => {}); });
  (async () => {
    try { await loadSpaces(); await load(); } catch (e) { say(e.message, 'error'); }
  })();
  return stopWatch;
}
