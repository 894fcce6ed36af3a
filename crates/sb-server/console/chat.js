// Chat: rooms and direct messages with unread counts, live messages over the socket, history
// scroll-back, typing and presence, attachments with upload progress, and search.

import { session, h, fill, api, act, say, qs, upload, onFrame, send, field, fmtTime, fmtBytes } from './lib.js';

let rooms = [];

// A direct room is named by its two members' ids; show the other one's username.
const directNames = new Map();

function roomLabel(r) {
  if (r.kind === 'direct') return '@ ' + (directNames.get(r.id) || 'direct message');
  return '# ' + r.name;
}

async function learnDirectNames(list) {
  await Promise.all(list.filter((r) => r.kind === 'direct' && !directNames.has(r.id)).map(async (r) => {
    const members = await api('GET', `/v1/rooms/${r.id}/members`).catch(() => []);
    const other = members.find((m) => m.user_id !== session.user.id) || members[0];
    if (other) directNames.set(r.id, other.username);
  }));
}

export function render(main, [roomId]) {
  const list = h('ul', { class: 'rooms', 'aria-label': 'Rooms' });
  const pane = h('section', { class: 'room', 'aria-label': 'Conversation' });
  const searchInput = h('input', { type: 'search', placeholder: 'Search messages', 'aria-label': 'Search messages' });
  const side = h('aside', { class: 'side' },
    h('form', { role: 'search', onsubmit: act(async (e) => {
      e.preventDefault();
      if (searchInput.value.trim()) await showSearch(pane, searchInput.value.trim());
    }) }, searchInput),
    h('h2', {}, 'Rooms'), list,
    h('details', {}, h('summary', {}, 'New room'), newRoomForm()),
    h('details', {}, h('summary', {}, 'Message someone'), directForm()),
    h('details', {}, h('summary', {}, 'Public rooms'), publicRooms()));
  fill(main, h('div', { class: 'split' }, side, pane));

  const stops = [];
  let view = null;

  async function loadRooms() {
    rooms = await api('GET', '/v1/rooms');
    await learnDirectNames(rooms);
    fill(list, rooms.map((r) => {
      const unread = r.id === roomId ? 0 : (r.unread || 0);
      return h('li', {}, h('a', {
        href: '#/chat/' + r.id,
        'aria-current': r.id === roomId ? 'page' : false,
        'data-room': r.id,
      }, roomLabel(r), r.encrypted ? h('span', { class: 'tag', title: 'end-to-end encrypted' }, 'E2EE') : null,
      unread ? h('span', { class: 'badge', 'aria-label': unread + ' unread' }, String(unread)) : null));
    }));
    return rooms;
  }

  // Live delivery: ask for everything after each room's newest message.
  function sync() {
    send({ type: 'chat_sync', id: 'sync-' + Date.now(), cursors: rooms.map((r) => ({ room: r.id, seq: r.last_seq })) });
  }

  // After a reconnect: replay from the cursors this page holds, then refresh the list.
  stops.push(onFrame('socket_open', () => { if (rooms.length) sync(); loadRooms().catch(() => {}); }));
  stops.push(onFrame('chat_message', (f) => {
    const m = f.message;
    const r = rooms.find((x) => x.id === m.room);
    if (r) r.last_seq = Math.max(r.last_seq, m.seq);
    if (view && view.room.id === m.room) view.add(m);
    else if (r && m.kind === 'text' && m.sender !== session.user.id) {
      r.unread = (r.unread || 0) + 1;
      const a = list.querySelector(`a[data-room="${m.room}"]`);
      if (a) {
        a.querySelector('.badge')?.remove();
        a.append(h('span', { class: 'badge', 'aria-label': r.unread + ' unread' }, String(r.unread)));
      }
    }
  }));
  stops.push(onFrame('chat_membership', () => loadRooms().then(sync).catch(() => {})));
  stops.push(onFrame('chat_typing', (f) => view && view.room.id === f.room && view.typing(f)));
  stops.push(onFrame('presence', (f) => view && view.presence(f)));

  (async () => {
    try {
      await loadRooms();
      sync();
      const room = rooms.find((r) => r.id === roomId);
      if (room) view = await openRoom(pane, room);
      else fill(pane, h('div', { class: 'empty' }, h('h1', {}, 'Chat'),
        h('p', { class: 'muted' }, rooms.length ? 'Pick a room.' : 'No rooms yet: make one, or message someone.')));
    } catch (err) { say(err.message, 'error'); }
  })();

  return () => { for (const s of stops) s(); view?.close(); };
}

function newRoomForm() {
  const name = h('input', { required: true });
  const topic = h('input', {});
  const pub = h('input', { type: 'checkbox' });
  return h('form', { class: 'stack', onsubmit: act(async (e) => {
    e.preventDefault();
    const r = await api('POST', '/v1/rooms', { name: name.value, topic: topic.value, public: pub.checked });
    location.hash = '#/chat/' + r.id;
  }) }, field('Name', name), field('Topic', topic),
  h('label', { class: 'check' }, pub, ' Anyone may join'), h('button', { type: 'submit' }, 'Create room'));
}

function directForm() {
  const user = h('input', { required: true, autocapitalize: 'none' });
  return h('form', { class: 'stack', onsubmit: act(async (e) => {
    e.preventDefault();
    const r = await api('POST', '/v1/rooms/direct', { username: user.value.trim() });
    location.hash = '#/chat/' + r.id;
  }) }, field('Username', user), h('button', { type: 'submit' }, 'Open conversation'));
}

function publicRooms() {
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  api('GET', '/v1/rooms/public').then((list) => {
    fill(box, list.length ? h('ul', { class: 'plain' }, list.map((r) => h('li', {}, r.name, ' ',
      h('button', { type: 'button', class: 'small', onclick: act(async () => {
        await api('POST', `/v1/rooms/${r.id}/join`);
        location.hash = '#/chat/' + r.id;
      }) }, 'Join')))) : h('p', { class: 'muted' }, 'No public rooms.'));
  }).catch((e) => fill(box, h('p', { class: 'error' }, e.message)));
  return box;
}

async function showSearch(pane, q) {
  const hits = await api('GET', '/v1/search/messages' + qs({ q }));
  fill(pane, h('h1', {}, 'Search: ', q),
    hits.length ? h('ol', { class: 'messages' }, hits.map((m) => {
      const r = rooms.find((x) => x.id === m.room);
      return h('li', { class: 'message' }, h('div', { class: 'meta' },
        h('a', { href: '#/chat/' + m.room }, r ? roomLabel(r) : m.room), ' · ', fmtTime(m.created_at_ms)),
      h('div', { class: 'body' }, m.body));
    })) : h('p', { class: 'muted' }, 'No messages match.'));
}

async function openRoom(pane, room) {
  const members = await api('GET', `/v1/rooms/${room.id}/members`);
  const names = new Map(members.map((m) => [m.user_id, m.username]));
  const nameOf = (id) => names.get(id) || id.slice(0, 8);
  const shown = new Map(); // seq → element
  let first = null;
  const log = h('ol', { class: 'messages', 'aria-live': 'polite', 'aria-label': 'Messages' });
  const typingLine = h('p', { class: 'typing muted', 'aria-live': 'polite' });
  const memberList = h('ul', { class: 'members plain', 'aria-label': 'Members' });
  const earlier = h('button', { type: 'button', class: 'small', onclick: act(loadEarlier) }, 'Load earlier messages');
  const scroller = h('div', { class: 'scroll' }, earlier, log);

  function drawMembers() {
    fill(memberList, members.map((m) => h('li', {},
      h('span', { class: 'dot ' + m.presence, 'aria-hidden': 'true' }), m.username,
      h('span', { class: 'sr-only' }, ' (' + m.presence + ')'))));
  }
  drawMembers();

  function attachmentLinks(m) {
    return m.attachments.map((id) => h('a', {
      class: 'attachment', href: `/v1/rooms/${room.id}/attachments/${id}`, download: '',
    }, 'Download attachment'));
  }

  function messageEl(m) {
    if (room.encrypted && m.kind !== 'system') {
      return h('li', { class: 'message encrypted' }, h('div', { class: 'meta' }, nameOf(m.sender), ' · ', fmtTime(m.created_at_ms)),
        h('div', { class: 'body muted' }, 'Encrypted message'));
    }
    return h('li', { class: 'message' + (m.sender === session.user.id ? ' mine' : ''), 'data-seq': m.seq },
      h('div', { class: 'meta' }, h('strong', {}, nameOf(m.sender)), ' · ', h('time', { datetime: new Date(m.created_at_ms).toISOString() }, fmtTime(m.created_at_ms)),
        m.edited_at_ms ? ' · edited' : null),
      h('div', { class: 'body' }, m.deleted ? h('em', { class: 'muted' }, 'deleted') : m.body),
      attachmentLinks(m), h('div', { class: 'reactions' }));
  }

  function add(m, atTop = false) {
    if (shown.has(m.seq)) return;
    if (m.kind === 'edit' || m.kind === 'delete' || m.kind === 'reaction') {
      const target = shown.get(m.target);
      shown.set(m.seq, null);
      if (!target) return;
      if (m.kind === 'edit') target.querySelector('.body').textContent = m.body;
      if (m.kind === 'delete') fill(target.querySelector('.body'), h('em', { class: 'muted' }, 'deleted'));
      if (m.kind === 'reaction') target.querySelector('.reactions')?.append(h('span', { class: 'reaction' }, m.body));
      return;
    }
    const el = messageEl(m);
    shown.set(m.seq, el);
    if (first === null || m.seq < first) first = m.seq;
    const near = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    if (atTop) log.prepend(el); else log.append(el);
    if (!atTop && (near || m.sender === session.user.id)) scroller.scrollTop = scroller.scrollHeight;
    if (!atTop) markRead(m.seq);
  }

  let readSent = 0;
  function markRead(seq) {
    if (seq <= readSent || document.hidden) return;
    readSent = seq;
    send({ type: 'chat_read', id: 'read-' + seq, room: room.id, seq });
  }

  async function loadEarlier() {
    const page = await api('GET', `/v1/rooms/${room.id}/messages` + qs({ before: first, limit: 50 }));
    if (!page.length) { earlier.disabled = true; earlier.textContent = 'The beginning of the room'; return; }
    const height = scroller.scrollHeight;
    for (const m of [...page].reverse()) add(m, true);
    scroller.scrollTop = scroller.scrollHeight - height;
  }

  const typers = new Map();
  function typing(f) {
    if (f.user_id === session.user.id) return;
    clearTimeout(typers.get(f.username));
    typers.set(f.username, setTimeout(() => { typers.delete(f.username); showTyping(); }, 4000));
    showTyping();
  }
  function showTyping() {
    const who = [...typers.keys()];
    typingLine.textContent = who.length ? who.join(', ') + (who.length > 1 ? ' are' : ' is') + ' typing…' : '';
  }
  function presence(f) {
    const m = members.find((x) => x.user_id === f.user_id);
    if (m) { m.presence = f.status; drawMembers(); }
  }

  const head = h('header', { class: 'room-head' },
    h('h1', {}, roomLabel(room)), room.topic ? h('p', { class: 'muted' }, room.topic) : null);
  let composer;
  if (room.encrypted) {
    composer = h('div', { class: 'notice', role: 'note' },
      h('strong', {}, 'End-to-end encrypted room. '),
      'This browser holds no keys for it, so its messages cannot be read or sent here. ',
      'Use ', h('code', {}, 'sb chat open'), ' on a device that is a member.');
  } else {
    composer = composerFor(room, typingLine);
  }
  const addMember = h('input', { autocapitalize: 'none' });
  const details = h('details', { class: 'room-members' }, h('summary', {}, `Members (${members.length})`), memberList,
    room.kind === 'group' ? h('form', { class: 'inline', onsubmit: act(async (e) => {
      e.preventDefault();
      await api('POST', `/v1/rooms/${room.id}/members`, { username: addMember.value.trim() });
      say(addMember.value.trim() + ' added.');
      addMember.value = '';
    }) }, field('Add member', addMember), h('button', { type: 'submit', class: 'small' }, 'Add')) : null);
  fill(pane, head, details, scroller, typingLine, composer);

  const latest = await api('GET', `/v1/rooms/${room.id}/messages` + qs({ limit: 50 }));
  for (const m of latest) add(m);
  if (latest.length < 50) { earlier.disabled = true; earlier.textContent = 'The beginning of the room'; }
  scroller.scrollTop = scroller.scrollHeight;
  composer.querySelector?.('textarea')?.focus();
  return { room, add, typing, presence, close() { for (const t of typers.values()) clearTimeout(t); } };
}

function composerFor(room, typingLine) {
  const text = h('textarea', { rows: 2, placeholder: 'Message', 'aria-label': 'Message' });
  const fileInput = h('input', { type: 'file', class: 'sr-only', id: 'attach-' + room.id });
  const progress = h('progress', { max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  const progressText = h('span', { class: 'muted small' });
  let lastTyping = 0;

  function sendText(body, attachments = []) {
    const id = crypto.randomUUID();
    send({ type: 'chat_send', id, room: room.id, message_id: id, body, attachments });
  }

  async function attach(file) {
    progress.hidden = false;
    progress.value = 0;
    try {
      const a = await upload('POST', `/v1/rooms/${room.id}/attachments` + qs({ name: file.name }), file, (done, total) => {
        progress.value = Math.round(100 * done / total);
        progressText.textContent = `${file.name}: ${fmtBytes(done)} of ${fmtBytes(total)}`;
      });
      sendText(text.value.trim() || file.name, [a.id]);
      text.value = '';
      progressText.textContent = `${file.name} sent.`;
    } catch (err) {
      progressText.textContent = '';
      say(`${file.name}: ${err.message}`, 'error');
    } finally {
      progress.hidden = true;
    }
  }

  text.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  text.addEventListener('input', () => {
    if (Date.now() - lastTyping > 3000 && text.value) {
      lastTyping = Date.now();
      send({ type: 'chat_typing', room: room.id });
    }
  });
  fileInput.addEventListener('change', () => { if (fileInput.files[0]) attach(fileInput.files[0]); fileInput.value = ''; });
  const form = h('form', { class: 'composer', onsubmit: (e) => {
    e.preventDefault();
    const body = text.value.trim();
    if (!body) return;
    sendText(body);
    text.value = '';
    typingLine.textContent = '';
  } }, text,
  h('label', { for: fileInput.id, class: 'button secondary', tabindex: 0, onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } } }, 'Attach'),
  fileInput, h('button', { type: 'submit' }, 'Send'), progress, progressText);
  form.addEventListener('dragover', (e) => { e.preventDefault(); form.classList.add('drop'); });
  form.addEventListener('dragleave', () => form.classList.remove('drop'));
  form.addEventListener('drop', (e) => {
    e.preventDefault();
    form.classList.remove('drop');
    if (e.dataTransfer.files[0]) attach(e.dataTransfer.files[0]);
  });
  return form;
}
