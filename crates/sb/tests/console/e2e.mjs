// The web console in Chromium, driven by playwright-core, against the real server that
// crates/sb/tests/console.rs started (users admin and bob, one simulated device, a firing
// alert). Prints one line per step; exits non-zero on the first failure.

import { chromium } from 'playwright-core';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const base = process.env.SB_URL;
const password = process.env.SB_PASSWORD;
const deviceId = process.env.SB_DEVICE_ID;
const deviceName = process.env.SB_DEVICE_NAME;
const shots = process.env.SB_SCREENSHOTS;
const origin = new URL(base);
const TIMEOUT = 20_000;

const browser = await chromium.launch({
  executablePath: process.env.SB_CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const requested = new Set();
const problems = [];
const DESKTOP = { viewport: { width: 1280, height: 800 } };
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

async function newPage(name, device) {
  const context = await browser.newContext({ ...device, ignoreHTTPSErrors: true, acceptDownloads: true });
  context.on('request', (r) => requested.add(r.url()));
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('websocket', (ws) => requested.add(ws.url()));
  page.on('pageerror', (e) => problems.push(`${name}: uncaught ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[0-9]/.test(m.text())) problems.push(`${name}: console error ${m.text()}`);
  });
  // Any Content-Security-Policy violation by our own pages is a bug.
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  return { context, page };
}

async function step(name, f) {
  const t = Date.now();
  try {
    await f();
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    throw e;
  }
}

async function shot(page, name, width) {
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(shots, `${name}-${width}.png`), fullPage: true });
}

async function login(page, username) {
  await page.goto(base + '/');
  const form = page.locator('form', { has: page.getByRole('heading', { name: 'Log in' }) });
  await form.getByLabel('Username').fill(username);
  await form.getByLabel('Password').fill(password);
  await form.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#nav .who', { hasText: username }).waitFor({ state: 'attached' });
}

let failed = false;
try {
  const { context: adminCtx, page: admin } = await newPage('admin', DESKTOP);
  const { page: bob } = await newPage('bob', DESKTOP);

  await step('the login page renders and a wrong password is refused', async () => {
    await admin.goto(base + '/');
    await admin.getByRole('heading', { name: 'Log in' }).waitFor();
    await shot(admin, 'login', 'desktop');
    await admin.getByLabel('Username').fill('admin');
    await admin.getByLabel('Password').fill('not the password');
    await admin.getByRole('button', { name: 'Log in' }).click();
    await admin.getByRole('alert').filter({ hasText: /invalid username or password/ }).waitFor();
  });

  await step('admin and bob log in', async () => {
    await login(admin, 'admin');
    await login(bob, 'bob');
  });

  await step('the session token is in an HttpOnly cookie and nowhere a script can read', async () => {
    const cookies = await adminCtx.cookies(base);
    const c = cookies.find((x) => x.name === '__Host-sb_session');
    assert.ok(c, 'the session cookie is set');
    assert.equal(c.httpOnly, true);
    assert.equal(c.secure, true);
    assert.equal(c.sameSite, 'Strict');
    const seen = await admin.evaluate(() => ({
      cookie: document.cookie,
      local: Object.keys(localStorage).length,
      session: Object.keys(sessionStorage).length,
    }));
    assert.equal(seen.cookie.includes(c.value), false, 'document.cookie cannot see the token');
    assert.deepEqual([seen.local, seen.session], [0, 0], 'nothing in web storage');
  });

  await step('the Content-Security-Policy blocks injected script, handlers, styles and other hosts', async () => {
    const before = problems.length;
    const r = await admin.evaluate(async () => {
      window.__inline = false;
      window.__handler = false;
      const s = document.createElement('script');
      s.textContent = 'window.__inline = true';
      document.body.append(s);
      const b = document.createElement('button');
      b.setAttribute('onclick', 'window.__handler = true');
      document.body.append(b);
      b.click();
      b.remove();
      const st = document.createElement('style');
      st.textContent = 'body { display: none }';
      document.head.append(st);
      const hidden = getComputedStyle(document.body).display === 'none';
      st.remove();
      let fetched = true;
      try { await fetch('https://example.com/'); } catch { fetched = false; }
      await new Promise((r) => setTimeout(r, 100));
      const violations = window.__violations.splice(0);
      return { inline: window.__inline, handler: window.__handler, hidden, fetched, violations };
    });
    assert.equal(r.inline, false, 'an injected <script> did not run');
    assert.equal(r.handler, false, 'an injected onclick did not run');
    assert.equal(r.hidden, false, 'an injected <style> did not apply');
    assert.equal(r.fetched, false, 'a request to another host was refused');
    for (const d of ['script-src-elem', 'script-src-attr', 'style-src-elem', 'connect-src']) {
      assert.ok(r.violations.some((v) => v.startsWith(d)), `${d} in ${JSON.stringify(r.violations)}`);
    }
    // These were provoked on purpose: not the app's problems.
    problems.splice(before);
    requested.delete('https://example.com/');
  });

  let roomUrl;
  await step('a direct message goes from admin to bob in real time, with typing', async () => {
    await admin.goto(base + '/#/chat');
    await admin.locator('summary', { hasText: 'Message someone' }).click();
    const dm = admin.locator('form', { has: admin.getByRole('button', { name: 'Open conversation' }) });
    await dm.getByLabel('Username').fill('bob');
    await dm.getByRole('button', { name: 'Open conversation' }).click();
    await admin.waitForURL(/#\/chat\/.+/);
    roomUrl = admin.url();
    await admin.getByRole('textbox', { name: 'Message' }).waitFor();
    await bob.goto(roomUrl);
    await bob.getByRole('textbox', { name: 'Message' }).waitFor();
    await admin.getByRole('textbox', { name: 'Message' }).pressSequentially('hel');
    await bob.getByText('admin is typing…').waitFor();
    const text = 'hello bob ' + Date.now();
    await admin.getByRole('textbox', { name: 'Message' }).fill(text);
    await admin.getByRole('textbox', { name: 'Message' }).press('Enter');
    await bob.locator('.message .body', { hasText: text }).waitFor();
    const reply = 'hi admin ' + Date.now();
    await bob.getByRole('textbox', { name: 'Message' }).fill(reply);
    await bob.getByRole('button', { name: 'Send' }).click();
    await admin.locator('.message .body', { hasText: reply }).waitFor();
    await shot(admin, 'chat', 'desktop');
  });

  await step('an attachment uploads with progress and reaches the other side', async () => {
    await admin.locator('input[type=file]').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('attached notes') });
    await admin.getByText('notes.txt sent.').waitFor();
    const link = bob.getByRole('link', { name: /Download attachment/ }).last();
    await link.waitFor();
    const [dl] = await Promise.all([bob.waitForEvent('download'), link.click()]);
    assert.equal(await readFile(await dl.path(), 'utf8'), 'attached notes');
  });

  await step('an encrypted room says this browser holds no keys, and offers no composer', async () => {
    await admin.getByRole('link', { name: /secret-plans/ }).click();
    await admin.getByRole('note').filter({ hasText: 'This browser holds no keys for it' }).waitFor();
    assert.equal(await admin.getByRole('textbox', { name: 'Message' }).count(), 0);
    await admin.goto(roomUrl);
    await admin.getByRole('textbox', { name: 'Message' }).waitFor();
  });

  await step('search finds the message', async () => {
    await admin.getByRole('searchbox', { name: 'Search messages' }).fill('hello');
    await admin.getByRole('searchbox', { name: 'Search messages' }).press('Enter');
    await admin.getByRole('heading', { name: /Search: hello/ }).waitFor();
    await admin.locator('.message .body', { hasText: 'hello bob' }).waitFor();
  });

  await step('files: drop a file, upload another with progress, download, restore a version', async () => {
    await admin.goto(base + '/#/files');
    await admin.locator('.dropzone').waitFor();
    const dt = await admin.evaluateHandle(() => {
      const d = new DataTransfer();
      d.items.add(new File(['first version'], 'hello.txt', { type: 'text/plain' }));
      return d;
    });
    await admin.dispatchEvent('.dropzone', 'drop', { dataTransfer: dt });
    await admin.getByRole('link', { name: 'hello.txt', exact: true }).waitFor();
    const big = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + (i >> 11)) & 0xff;
    await admin.locator('#file-upload').setInputFiles({ name: 'data.bin', mimeType: 'application/octet-stream', buffer: big });
    await admin.getByText('data.bin: uploaded').waitFor();
    const row = admin.getByRole('row', { name: /data\.bin/ });
    const [dl] = await Promise.all([admin.waitForEvent('download'), row.getByRole('link', { name: 'Download' }).click()]);
    assert.ok((await readFile(await dl.path())).equals(big), 'the download is byte for byte the upload');
    // A second version, then the first restored.
    const dt2 = await admin.evaluateHandle(() => {
      const d = new DataTransfer();
      d.items.add(new File(['second version'], 'hello.txt', { type: 'text/plain' }));
      return d;
    });
    await admin.dispatchEvent('.dropzone', 'drop', { dataTransfer: dt2 });
    await admin.getByRole('row', { name: /hello\.txt/ }).getByRole('cell', { name: '2', exact: true }).waitFor();
    await admin.getByRole('link', { name: 'hello.txt', exact: true }).click();
    const versions = admin.locator('.detail table');
    await versions.getByRole('row').nth(2).waitFor();
    await versions.getByRole('row', { name: /^1 / }).getByRole('button', { name: 'Restore' }).click();
    await versions.getByRole('row', { name: /^3 / }).waitFor();
    const current = admin.getByRole('row', { name: /hello\.txt/ }).first();
    await current.getByRole('cell', { name: '3', exact: true }).waitFor();
    const [dl2] = await Promise.all([admin.waitForEvent('download'), current.getByRole('link', { name: 'Download' }).click()]);
    assert.equal(await readFile(await dl2.path(), 'utf8'), 'first version');
    await shot(admin, 'files', 'desktop');
  });

  await step('devices: the fleet table lists the simulated device online', async () => {
    await admin.goto(base + '/#/devices');
    const row = admin.getByRole('row', { name: new RegExp(deviceName) });
    await row.getByText('online').waitFor();
    await shot(admin, 'devices', 'desktop');
  });

  await step('the device page\'s telemetry chart updates live', async () => {
    await admin.getByRole('link', { name: deviceName, exact: true }).click();
    const chart = admin.locator('#telemetry-chart');
    await chart.locator('canvas').waitFor();
    await admin.waitForFunction(() => Number(document.querySelector('#telemetry-chart')?.dataset.points) > 0);
    const first = Number(await chart.getAttribute('data-points'));
    await admin.waitForFunction((n) => Number(document.querySelector('#telemetry-chart')?.dataset.points) > n, first, { timeout: 30_000 });
    await admin.getByText(/temperature/).first().waitFor();
  });

  await step('the twin\'s desired state is edited and a command is called', async () => {
    const desired = admin.getByLabel(/Desired \(version/);
    await desired.fill('{"report_interval": 5}');
    await admin.getByRole('button', { name: 'Save desired state' }).click();
    await admin.getByText('Desired state saved; the device is told.').waitFor();
    await admin.getByLabel('Method').fill('echo');
    await admin.getByLabel('Payload (JSON)').fill('{"n": 42}');
    await admin.getByRole('button', { name: 'Call' }).click();
    await admin.locator('.command-state', { hasText: 'succeeded' }).waitFor();
    await admin.locator('pre', { hasText: '"n": 42' }).waitFor();
    await shot(admin, 'device', 'desktop');
  });

  await step('a PromQL query draws a graph and a table', async () => {
    await admin.goto(base + '/#/monitor/query');
    await admin.getByLabel('PromQL expression').fill(`temperature{device_id="${deviceId}"}`);
    await admin.getByLabel('Range').selectOption({ label: '15m' });
    await admin.getByRole('button', { name: 'Run query' }).click();
    await admin.locator('#query-chart canvas').waitFor();
    await admin.waitForFunction(() => Number(document.querySelector('#query-chart')?.dataset.series) === 1);
    await admin.getByRole('cell', { name: /temperature\{/ }).waitFor();
    await shot(admin, 'query', 'desktop');
  });

  await step('a dashboard is saved on the server and comes back after a reload', async () => {
    await admin.goto(base + '/#/monitor/dashboards');
    await admin.getByLabel('New dashboard').fill('Fleet');
    await admin.getByRole('button', { name: 'Create' }).click();
    await admin.getByRole('heading', { name: 'Fleet' }).waitFor();
    await admin.locator('summary', { hasText: 'Add a panel' }).click();
    await admin.getByLabel('Title').fill('Temperature');
    await admin.getByLabel('PromQL').fill('temperature');
    await admin.getByRole('button', { name: 'Add panel' }).click();
    await admin.locator('.panel canvas').waitFor();
    await admin.reload();
    await admin.getByRole('heading', { name: 'Temperature' }).waitFor();
    await admin.locator('.panel canvas').waitFor();
    await shot(admin, 'dashboards', 'desktop');
  });

  await step('a firing alert is silenced', async () => {
    await admin.goto(base + '/#/monitor/alerts');
    const row = admin.getByRole('row', { name: /ConsoleCheck/ });
    await row.getByText('firing', { exact: true }).waitFor({ timeout: 30_000 });
    await row.getByRole('button', { name: 'Silence…' }).click();
    await admin.getByLabel('Comment').fill('maintenance window');
    await admin.getByRole('button', { name: 'Silence', exact: true }).click();
    await admin.getByText('Silenced.').waitFor();
    await row.getByText('firing (silenced)').waitFor();
    await admin.getByRole('cell', { name: 'maintenance window' }).waitFor();
    await shot(admin, 'alerts', 'desktop');
  });

  await step('admin: users, an invite, and the audit chain verified', async () => {
    await admin.goto(base + '/#/admin');
    await admin.getByRole('cell', { name: 'bob', exact: true }).first().waitFor();
    await admin.getByRole('button', { name: 'Create an invite' }).click();
    await admin.locator('pre.secret', { hasText: /^sbi_/ }).waitFor();
    await admin.getByRole('button', { name: 'Verify the chain' }).click();
    await admin.getByText(/The chain holds: \d+ records verified\./).waitFor();
    await shot(admin, 'admin', 'desktop');
  });

  await step('account: sessions and an API token', async () => {
    await admin.goto(base + '/#/account');
    await admin.getByText('this browser').waitFor();
    await admin.locator('summary', { hasText: 'New token' }).click();
    await admin.getByLabel('Name', { exact: true }).fill('ci');
    await admin.getByRole('button', { name: 'Create token' }).click();
    await admin.locator('pre.secret', { hasText: /^sbt_/ }).waitFor();
    await admin.getByRole('cell', { name: 'ci', exact: true }).waitFor();
    await shot(admin, 'account', 'desktop');
  });

  await step('every main page at phone width', async () => {
    const { page: phone } = await newPage('phone', PHONE);
    await phone.goto(base + '/');
    await phone.getByRole('heading', { name: 'Log in' }).waitFor();
    await shot(phone, 'login', 'phone');
    await login(phone, 'admin');
    const pages = [
      ['chat', roomUrl.slice(roomUrl.indexOf('#')), () => phone.locator('.message').first().waitFor()],
      ['devices', '#/devices', () => phone.getByRole('link', { name: deviceName }).waitFor()],
      ['device', '#/devices/' + deviceId, () => phone.locator('#telemetry-chart canvas').waitFor()],
      ['files', '#/files', () => phone.getByRole('link', { name: 'hello.txt', exact: true }).waitFor()],
      ['query', '#/monitor/query/' + encodeURIComponent('temperature'), () => phone.locator('#query-chart canvas').waitFor()],
      ['dashboards', '#/monitor/dashboards/Fleet', () => phone.locator('.panel canvas').waitFor()],
      ['alerts', '#/monitor/alerts', () => phone.getByText('maintenance window').first().waitFor()],
      ['admin', '#/admin', () => phone.getByRole('cell', { name: 'bob', exact: true }).first().waitFor()],
      ['account', '#/account', () => phone.getByText('this browser').waitFor()],
    ];
    for (const [name, hash, ready] of pages) {
      await phone.goto(base + '/' + hash);
      await ready();
      await shot(phone, name, 'phone');
    }
    // The menu folds away at this width and opens from its button.
    await phone.getByRole('button', { name: 'Menu' }).click();
    await phone.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Files' }).click();
    await phone.waitForURL(/#\/files/);
  });

  await step('logging out ends the session', async () => {
    await bob.getByRole('button', { name: 'Log out' }).click();
    await bob.getByRole('heading', { name: 'Log in' }).waitFor();
    const r = await bob.evaluate(async () => (await fetch('/v1/console/session')).status);
    assert.equal(r, 401);
  });

  await step('no page broke its Content-Security-Policy or threw', async () => {
    for (const ctx of browser.contexts()) {
      for (const p of ctx.pages()) {
        const v = await p.evaluate(() => window.__violations);
        assert.deepEqual(v, [], `violations on ${p.url()}`);
      }
    }
    assert.deepEqual(problems, []);
  });

  await step('the app requested no host but the server', async () => {
    const others = [...requested].filter((u) => {
      const url = new URL(u);
      if (url.protocol === 'data:' || url.protocol === 'blob:') return false;
      return url.host !== origin.host || !['https:', 'wss:'].includes(url.protocol);
    });
    assert.ok(requested.size > 20, `saw ${requested.size} requests`);
    assert.deepEqual(others, []);
    console.log(`     ${requested.size} distinct URLs, all on ${origin.host}`);
  });
} catch (e) {
  failed = true;
  console.log(e.stack || String(e));
  // What each page showed when it failed.
  let i = 0;
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      i += 1;
      const text = await p.evaluate(() => document.body.innerText).catch(() => '(unavailable)');
      console.log(`--- page ${i} at ${p.url()}:\n${text.slice(0, 3000)}`);
      await p.screenshot({ path: join(shots, `failure-${i}.png`), fullPage: true }).catch(() => {});
    }
  }
  console.log('problems so far:', problems);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
