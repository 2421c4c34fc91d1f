// The web console in a real Chromium, driven by Playwright. The Rust test
// crates/mayfly/tests/console.rs starts `mayfly serve` on a loopback port,
// creates the tokens and runs this file with node --test.
//
// Environment: MAYFLY_URL, MAYFLY_ADMIN_TOKEN, MAYFLY_ALICE_TOKEN,
// MAYFLY_BOB_TOKEN, MAYFLY_SCREENSHOTS (a directory), CHROMIUM (the browser
// executable, /usr/bin/chromium by default).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = required('MAYFLY_URL');
const tokens = { admin: required('MAYFLY_ADMIN_TOKEN'), alice: required('MAYFLY_ALICE_TOKEN'), bob: required('MAYFLY_BOB_TOKEN') };
const screenshots = required('MAYFLY_SCREENSHOTS');
mkdirSync(screenshots, { recursive: true });

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run this file through cargo test --test console`);
  return value;
}

let browser;
/** Content-Security-Policy violations any page reported. */
const violations = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // Root cannot use Chromium's own sandbox; the browser only visits the
    // loopback server under test. The other flags keep it off the network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions'],
  });
});

after(async () => {
  await browser?.close();
});

/** Opens a fresh browser profile signed in as `user`, on the sessions page. */
async function signedIn(user, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 }, ...options });
  const page = await context.newPage();
  watch(page);
  await page.goto(`${url}/#/signin`);
  await page.locator('#token').fill(tokens[user]);
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/sessions$/);
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  return { context, page };
}

function watch(page) {
  page.on('console', (message) => {
    if (/Content.Security.Policy|Trusted Type/i.test(message.text())) violations.push(message.text());
  });
  page.on('pageerror', (error) => violations.push(`page error: ${error.message}`));
}

async function shot(page, name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: false });
}

/** Reads the text xterm.js shows on screen, with its no-break spaces as spaces. */
async function terminalText(page) {
  return (await page.locator('.xterm-rows').innerText()).replace(/\u00a0/g, ' ');
}

/** The shell's prompt on a line of its own. */
const PROMPT = /^\$ *$/m;

async function waitForTerminalText(page, pattern, timeout = 15000) {
  const started = Date.now();
  for (;;) {
    const text = await terminalText(page);
    if (pattern.test(text)) return text;
    if (Date.now() - started > timeout) assert.fail(`the terminal never showed ${pattern}; it shows:\n${text}`);
    await page.waitForTimeout(100);
  }
}

let aliceSession;

test('the page is served with a strict Content-Security-Policy', async () => {
  const response = await fetch(`${url}/`);
  assert.equal(response.status, 200);
  const policy = response.headers.get('content-security-policy');
  assert.match(policy, /script-src 'self';/);
  assert.match(policy, /style-src 'self' 'nonce-[A-Za-z0-9]+'/);
  assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/);
  assert.match(policy, /frame-ancestors 'none'/);
  assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
  const page = await response.text();
  const nonce = policy.match(/'nonce-([A-Za-z0-9]+)'/)[1];
  assert.ok(page.includes(`nonce="${nonce}"`), 'the page carries the nonce of its own policy');
  const second = await fetch(`${url}/`);
  assert.notEqual(second.headers.get('content-security-policy'), policy, 'every response gets a new nonce');
});

test('a wrong token is refused in plain words', async () => {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  watch(page);
  await page.goto(`${url}/`);
  await page.waitForURL(/#\/signin$/);
  // The token field has the focus, so a keyboard user types at once.
  assert.equal(await page.evaluate(() => document.activeElement.id), 'token');
  await shot(page, '01-sign-in');
  await page.keyboard.type('mfy_notarealtoken_0000000000000000000000');
  await page.keyboard.press('Enter');
  const error = page.locator('#signin-error');
  await error.filter({ hasText: 'not accepted' }).waitFor();
  await shot(page, '02-sign-in-refused');
  await context.close();
});

test('shell from launch to deadline', async () => {
  const { context, page } = await signedIn('alice');
  const card = page.locator('li[data-profile="quick"]');
  await card.waitFor();
  await shot(page, '03-sessions');
  await card.getByLabel('Time to live').fill('25s');
  await card.getByRole('button', { name: 'Launch quick' }).click();
  await page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  aliceSession = page.url().split('/').pop();

  await waitForTerminalText(page, PROMPT);
  await page.locator('.xterm-helper-textarea').focus();
  await page.keyboard.type('echo "mayfly-$((6*7))" && stty size');
  await page.keyboard.press('Enter');
  const text = await waitForTerminalText(page, /^mayfly-42\s*$/m);
  // The console sent the terminal's size to the shell after fitting the window.
  const size = text.match(/^(\d+) (\d+)\s*$/m);
  assert.ok(size, `stty size printed rows and columns:\n${text}`);
  assert.ok(Number(size[2]) > 80, `the terminal is wider than 80 columns on a laptop screen: ${size[0]}`);

  const countdown = page.locator('#countdown');
  assert.match(await countdown.innerText(), /^Ends in 0:[0-2]\d$/);
  await shot(page, '04-terminal');

  const banner = page.locator('#banner');
  await banner.filter({ hasText: /This session ends in (15 seconds|0:1\d)/ }).waitFor({ timeout: 20000 });
  await shot(page, '05-warning');

  const ended = page.locator('#ended');
  await ended.waitFor({ timeout: 30000 });
  assert.match(await page.locator('#end-reason').innerText(), /reached its deadline/);
  assert.equal(await countdown.innerText(), 'Ended');
  assert.equal(await page.getByRole('button', { name: /resume|reconnect/i }).count(), 0, 'the end screen offers no way back in');
  await shot(page, '06-ended');

  // Opening the ended session again shows the end screen, not a terminal.
  await page.goto(`${url}/#/sessions`);
  await page.goto(`${url}/#/sessions/${aliceSession}`);
  await page.locator('#ended').waitFor();
  assert.equal(await page.locator('.xterm').count(), 0);
  await context.close();
});

test('bob cannot open alice\'s session', async () => {
  assert.ok(aliceSession, 'the previous test created a session');
  const { context, page } = await signedIn('bob');
  assert.equal(await page.locator(`tr[data-session="${aliceSession}"]`).count(), 0, 'alice\'s session is not in bob\'s list');
  await page.goto(`${url}/#/sessions/${aliceSession}`);
  const error = page.getByRole('alert').filter({ hasText: `You cannot open session ${aliceSession}` });
  await error.waitFor();
  assert.equal(await page.locator('.xterm').count(), 0);
  await shot(page, '07-not-yours');
  await context.close();
});

test('a job launched from the console shows its output and its exit status', async () => {
  const { context, page } = await signedIn('alice');
  const card = page.locator('li[data-profile="default"]');
  await card.getByLabel('Command').fill(`/bin/sh -c 'echo "job says $((20+22))"; exit 3'`);
  await card.getByRole('button', { name: 'Launch default' }).click();
  await page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  await page.locator('#ended').waitFor({ timeout: 15000 });
  assert.match(await page.locator('#end-reason').innerText(), /exited with status 3/);
  await waitForTerminalText(page, /^job says 42 *$/m);
  await shot(page, '10-job-ended');

  // A command with an unclosed quote is refused before it reaches the server.
  await page.goto(`${url}/#/sessions`);
  await card.getByLabel('Command').fill(`/bin/echo 'oops`);
  await card.getByRole('button', { name: 'Launch default' }).click();
  await card.getByRole('alert').filter({ hasText: 'unclosed' }).waitFor();
  // A TTL above the profile's maximum gets the server's explanation.
  await card.getByLabel('Command').fill('/bin/true');
  await card.getByLabel('Time to live').fill('9h');
  await card.getByRole('button', { name: 'Launch default' }).click();
  await card.getByRole('alert').filter({ hasText: 'above the maximum' }).waitFor();
  await context.close();
});

test('a page of another origin cannot attach with the signed-in cookie', async () => {
  const { context, page } = await signedIn('alice');
  const card = page.locator('li[data-profile="quick"]');
  await card.getByRole('button', { name: 'Launch quick' }).click();
  await page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  const id = page.url().split('/').pop();
  await waitForTerminalText(page, PROMPT);
  // Free the writer slot, so only the origin check can refuse the next attach.
  await page.goto(`${url}/#/sessions`);

  // A page on another loopback port: the same site, so the browser sends
  // the SameSite=Strict cookie, but another origin.
  const foreign = http.createServer((_, response) => {
    response.writeHead(200, { 'content-type': 'text/html' });
    response.end('<!doctype html><title>other origin</title>');
  });
  await new Promise((resolve) => foreign.listen(0, '127.0.0.1', resolve));
  const other = await context.newPage();
  await other.goto(`http://127.0.0.1:${foreign.address().port}/`);
  const target = `${url.replace(/^http/, 'ws')}/v1/sessions/${id}/attach`;
  const outcome = await other.evaluate((address) => new Promise((resolve) => {
    const socket = new WebSocket(address);
    socket.onmessage = (event) => resolve(`message: ${event.data}`);
    socket.onclose = (event) => resolve(`closed ${event.code}`);
  }), target);
  assert.equal(outcome, 'closed 1006', 'the upgrade was refused before any message');
  const fetched = await other.evaluate((address) => fetch(address, { method: 'DELETE', credentials: 'include' }).then((r) => r.status, () => 'blocked'),
    `${url}/v1/sessions/${id}`);
  assert.notEqual(fetched, 204, 'a cross-origin delete with the cookie did not end the session');
  foreign.close();

  // The session's own page can still attach, and its terminal follows the
  // window's height both ways.
  await page.goto(`${url}/#/sessions/${id}`);
  await waitForTerminalText(page, PROMPT);
  const rows = async (mark) => {
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.type(`clear; echo "${mark} $(stty size)"`);
    await page.keyboard.press('Enter');
    const pattern = new RegExp(`^${mark} (\\d+) \\d+ *$`, 'm');
    const text = await waitForTerminalText(page, pattern);
    return Number(text.match(pattern)[1]);
  };
  const tall = await rows('tall');
  await page.setViewportSize({ width: 1366, height: 450 });
  // The terminal refits after the window's resize event and then sends the
  // new size to the server, so the shell may get it only a moment later.
  let short = tall;
  for (let attempt = 0; attempt < 10 && short >= tall; attempt += 1) {
    await page.waitForTimeout(300);
    short = await rows(`short${attempt}`);
  }
  assert.ok(short < tall, `the terminal shrank with the window: ${tall} rows, then ${short}`);
  await context.close();
});

test('an admin sees every session, ends one, and reads the verified audit log', async () => {
  const owner = await signedIn('alice');
  const card = owner.page.locator('li[data-profile="quick"]');
  await card.getByRole('button', { name: 'Launch quick' }).click();
  await owner.page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  const id = owner.page.url().split('/').pop();
  await waitForTerminalText(owner.page, PROMPT);

  const { context, page } = await signedIn('admin');
  await page.getByRole('link', { name: 'Administration' }).click();
  await page.waitForURL(/#\/admin$/);
  const row = page.locator(`#all-sessions tr[data-session="${id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /alice/);
  await page.locator('#audit-intact').waitFor();
  assert.match(await page.locator('#audit-intact').innerText(), /^Intact: \d+ records/);
  // The records load in a second request, after the verification status.
  await page.locator('#audit-records tbody tr').first().waitFor();
  await shot(page, '08-admin');

  // Two presses: the first arms the button, the second ends the session.
  const end = row.getByRole('button', { name: `End session ${id}` });
  await end.focus();
  await page.keyboard.press('Enter');
  await row.getByRole('button', { name: /Confirm: end session/ }).waitFor();
  await page.keyboard.press('Enter');
  await row.locator('td.state-destroyed').waitFor({ timeout: 10000 });

  // The owner's terminal shows the end screen with who ended it.
  await owner.page.locator('#ended').waitFor({ timeout: 10000 });
  assert.match(await owner.page.locator('#end-reason').innerText(), /ended before its deadline/);
  await shot(owner.page, '09-ended-by-admin');
  await owner.context.close();
  await context.close();
});

test('browser session: page, link, German keys, Unicode paste and end', async () => {
  const origin = required('MAYFLY_ORIGIN');
  const { context, page } = await signedIn('alice');
  const card = page.locator('li[data-profile="web"]');
  await card.getByRole('button', { name: 'Launch web' }).click();
  await page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  const image = page.locator('#screen-image');
  await page.waitForFunction(() => document.getElementById('screen-image')?.naturalWidth > 0, null, { timeout: 30000 });
  const address = page.locator('#address');
  await page.waitForFunction((expected) => document.getElementById('address').value === expected, `${origin}/`, { timeout: 15000 });
  assert.match(await page.locator('#countdown').innerText(), /^Ends in \d+:\d\d/);
  await shot(page, '11-browser-home');

  // The page's viewport follows the space the viewer has for it.
  // Waits until the frame has the size of the screen element, and with
  // `narrowerThan`, a width below it: right after a resize, the old frame
  // still matches the screen element until the layout catches up.
  const followsScreen = (narrowerThan = Infinity) => page.waitForFunction((limit) => {
    const frame = document.getElementById('screen-image');
    const screen = document.getElementById('screen');
    return frame.naturalWidth < limit
      && Math.abs(frame.naturalWidth - (screen.clientWidth - 8)) <= 1
      && Math.abs(frame.naturalHeight - (screen.clientHeight - 8)) <= 1;
  }, narrowerThan, { timeout: 10000 });
  await followsScreen();
  let box = await image.boundingBox();
  const naturalHeight = await image.evaluate((node) => node.naturalHeight);
  const pageY = (y) => box.y + y * (box.height / naturalHeight);
  // The download link is 300 to 400 pixels down the page. The default
  // policy refuses the download, shows it to the viewer and audits it.
  await page.mouse.click(box.x + box.width / 2, pageY(350));
  await page.locator('#banner').filter({ hasText: 'download of _.._report.txt was refused' }).waitFor({ timeout: 15000 });
  const audit = await fetch(`${url}/v1/audit?since=1&limit=1000`, { headers: { Authorization: `Bearer ${tokens.admin}` } }).then((r) => r.json());
  const refused = audit.records.filter((r) => r.kind === 'browser.download_refused');
  assert.equal(refused.length, 1, JSON.stringify(refused));
  assert.equal(refused[0].fields.filename, '_.._report.txt');
  assert.equal(refused[0].fields.url, `${origin}/download`);
  await shot(page, '11b-browser-download-refused');

  // The form link fills the top 300 pixels.
  await page.mouse.click(box.x + box.width / 2, pageY(150));
  await page.waitForFunction((expected) => document.getElementById('address').value === expected, `${origin}/form`, { timeout: 15000 });

  // Type as a German keyboard would: umlauts and ß are keys of their own,
  // and AltGr+Q gives @, which the browser reports with Control and Alt.
  const keyboard = page.locator('#remote-keyboard');
  await keyboard.focus();
  await page.waitForTimeout(300);
  await page.keyboard.type('Grüße');
  await keyboard.evaluate((node) => {
    for (const type of ['keydown', 'keyup']) {
      node.dispatchEvent(new KeyboardEvent(type, { key: '@', code: 'KeyQ', ctrlKey: true, altKey: true, bubbles: true, cancelable: true }));
    }
  });
  // A paste of text outside the keyboard: CJK and an emoji.
  await keyboard.evaluate((node) => {
    const data = new DataTransfer();
    data.setData('text/plain', ' 日本語 😀');
    node.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
  });
  await page.waitForTimeout(300);
  await shot(page, '12-browser-typed');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.getElementById('address').value.includes('/result?value='), null, { timeout: 15000 });
  const sent = new URL(await address.inputValue()).searchParams.get('value');
  assert.equal(sent, 'Grüße@ 日本語 😀');

  // Time zone and language come from the profile (Asia/Tokyo, de-DE), in
  // the page, a worker, an iframe and the Accept-Language header.
  const [inPage, inWorker, inFrame, acceptLanguage] = (await report(page, origin, '/env')).split('|');
  assert.equal(inPage, 'Asia/Tokyo,de-DE');
  assert.equal(inWorker, 'Asia/Tokyo,de-DE');
  assert.equal(inFrame, 'Asia/Tokyo,de-DE');
  assert.match(acceptLanguage, /^de-DE/);

  // A smaller window gives the page a smaller viewport.
  const before = await image.evaluate((node) => node.naturalWidth);
  await page.setViewportSize({ width: 1100, height: 650 });
  await followsScreen(before);
  assert.ok((await image.evaluate((node) => node.naturalWidth)) < before, 'the viewport shrank with the window');
  box = await image.boundingBox();

  // The address bar opens only web addresses.
  await address.fill('file:///etc/passwd');
  await address.press('Enter');
  await page.locator('#banner').filter({ hasText: 'only http and https' }).waitFor();

  await page.locator('#end-session').click();
  await page.locator('#end-session').click();
  await page.locator('#ended').waitFor({ timeout: 15000 });
  assert.match(await page.locator('#end-reason').innerText(), /ended before its deadline/);
  await shot(page, '13-browser-ended');
  await context.close();
});

/** Opens `path` of the origin in the browser session's address bar and returns the value the page reports. */
async function report(page, origin, path) {
  const address = page.locator('#address');
  // Until the navigation starts, the address bar can show the result of
  // an earlier page again, so only a different result counts.
  const before = await address.inputValue();
  await address.fill(`${origin}${path}`);
  await address.press('Enter');
  await page.waitForFunction(
    (previous) => {
      const value = document.getElementById('address').value;
      return value.includes('/result?value=') && value !== previous;
    },
    before,
    { timeout: 15000 },
  );
  return new URL(await address.inputValue()).searchParams.get('value');
}

async function launchWeb(user, options = {}) {
  const { context, page } = await signedIn(user, options);
  await page.locator('li[data-profile="web"]').getByRole('button', { name: 'Launch web' }).click();
  await page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  await page.waitForFunction(() => document.getElementById('screen-image')?.naturalWidth > 0, null, { timeout: 30000 });
  return { context, page };
}

test('browser state planted in one session is absent in the next', async () => {
  const origin = required('MAYFLY_ORIGIN');
  const first = await launchWeb('alice');
  assert.equal(await report(first.page, origin, '/plant'), 'planted');
  assert.equal(await report(first.page, origin, '/check'), 'planted=yes|yes|1', 'the cookie, the storage and the service worker exist');
  await first.page.locator('#end-session').click();
  await first.page.locator('#end-session').click();
  await first.page.locator('#ended').waitFor({ timeout: 15000 });
  await first.context.close();

  const second = await launchWeb('alice');
  assert.equal(await report(second.page, origin, '/check'), '||0', 'a new session has no cookie, storage or service worker');
  await second.page.locator('#end-session').click();
  await second.page.locator('#end-session').click();
  await second.page.locator('#ended').waitFor({ timeout: 15000 });
  await second.context.close();
});

/** Waits until the viewer's address bar shows `expected` (a string or a pattern). */
async function addressShows(page, expected) {
  try {
    await page.waitForFunction((want) => {
      const value = document.getElementById('address').value;
      return want.pattern ? new RegExp(want.pattern).test(value) : value === want.text;
    }, expected instanceof RegExp ? { pattern: expected.source } : { text: expected }, { timeout: 15000 });
  } catch (error) {
    const shown = await page.locator('#address').inputValue();
    const banner = await page.locator('#banner').innerText().catch(() => '');
    throw new Error(`the address bar shows ${JSON.stringify(shown)}, not ${expected}; tabs: ${JSON.stringify(await tabList(page))}; banner: ${banner}`);
  }
}

/** Returns the tabs the viewer lists: their titles, and which one is in front. */
async function tabList(page) {
  return page.locator('#tab-list li').evaluateAll((items) => items.map((li) => ({
    id: li.dataset.tab,
    name: li.querySelector('.tab-show').textContent,
    current: li.querySelector('.tab-show').getAttribute('aria-current') === 'page',
  })));
}

test('browser session: tabs, popups, touch, composition, dead keys, modifiers, copy and watermark', async () => {
  const origin = required('MAYFLY_ORIGIN');
  const { context, page } = await launchWeb('alice', { hasTouch: true });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
  const address = page.locator('#address');
  const keyboard = page.locator('#remote-keyboard');
  const image = page.locator('#screen-image');
  const sessionId = page.url().split('/').pop();

  // The profile turns the watermark on: the user and the session id.
  const watermark = await page.locator('#watermark span').first().textContent();
  assert.equal(watermark, `alice · ${sessionId}`);

  // A link with a target opens a tab, which comes to the front. The address
  // changes when the navigation commits, before the page is parsed, so the
  // click waits for the page's title in the tab bar.
  await address.fill(`${origin}/popup`);
  await address.press('Enter');
  await addressShows(page, `${origin}/popup`);
  await page.waitForFunction(() => [...document.querySelectorAll('#tab-list .tab-show')].some((tab) => tab.textContent.endsWith('Popups')));
  await page.waitForFunction(() => document.getElementById('screen-image').naturalHeight > 0);
  let box = await image.boundingBox();
  const scale = box.height / (await image.evaluate((node) => node.naturalHeight));
  await page.mouse.click(box.x + 200 * scale, box.y + 100 * scale);
  await addressShows(page, `${origin}/form`);
  let tabs = await tabList(page);
  assert.equal(tabs.length, 2, JSON.stringify(tabs));
  assert.ok(tabs[1].current, 'the new tab is in front');

  // Back to the first tab, then window.open gives a third.
  await page.locator('#tab-list li').first().locator('.tab-show').click();
  await addressShows(page, `${origin}/popup`);
  await page.waitForTimeout(500);
  await page.mouse.click(box.x + 200 * scale, box.y + 300 * scale);
  await addressShows(page, `${origin}/result?value=popup`);
  tabs = await tabList(page);
  assert.equal(tabs.length, 3, JSON.stringify(tabs));
  assert.ok(tabs[2].current, 'the popup is in front');
  await shot(page, '14-browser-tabs');

  // Closing the tab in front shows the newest one left; + opens a blank tab.
  await page.locator(`#tab-list li[data-tab="${tabs[2].id}"] .tab-close`).click();
  await page.waitForFunction(() => document.querySelectorAll('#tab-list li').length === 2);
  await addressShows(page, `${origin}/form`);
  await page.locator(`#tab-list li[data-tab="${tabs[1].id}"] .tab-close`).click();
  // The tab bar shrinks when the server's new tab list arrives, which moves
  // the + button. A click before that can land where the button was.
  await page.waitForFunction(() => document.querySelectorAll('#tab-list li').length === 1);
  await addressShows(page, `${origin}/popup`);
  await page.locator('#tab-new').click();
  await addressShows(page, 'about:blank');
  tabs = await tabList(page);
  assert.equal(tabs.length, 2, JSON.stringify(tabs));
  assert.ok(tabs[1].current);

  // Typing, touch and modifiers on a page that records them.
  await address.fill(`${origin}/input`);
  await address.press('Enter');
  await addressShows(page, `${origin}/input`);
  await page.waitForTimeout(500);
  box = await image.boundingBox();

  // An IME composition in the viewer: the page gets the finished text once.
  await keyboard.focus();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Input.imeSetComposition', { text: 'にほ', selectionStart: 2, selectionEnd: 2 });
  await cdp.send('Input.imeSetComposition', { text: 'にほんご', selectionStart: 4, selectionEnd: 4 });
  await cdp.send('Input.insertText', { text: '日本語' });
  // Dead keys: Windows and Linux report the dead key, then the composed
  // character as a key; macOS composes it.
  await keyboard.evaluate((node) => {
    const key = (type, key, code) => node.dispatchEvent(new KeyboardEvent(type, { key, code, bubbles: true, cancelable: true }));
    key('keydown', 'Dead', 'Equal');
    key('keyup', 'Dead', 'Equal');
    key('keydown', 'é', 'KeyE');
    key('keyup', 'é', 'KeyE');
    node.dispatchEvent(new CompositionEvent('compositionstart', { data: '', bubbles: true }));
    node.dispatchEvent(new CompositionEvent('compositionupdate', { data: '`', bubbles: true }));
    node.dispatchEvent(new CompositionEvent('compositionend', { data: 'à', bubbles: true }));
  });

  // A finger on the pad (which takes the focus from the field).
  await page.touchscreen.tap(box.x + 300 * scale, box.y + 160 * scale);

  // Shift held down when the viewer loses focus does not stay pressed.
  await page.keyboard.down('Shift');
  await page.waitForTimeout(200);
  await address.click();
  await page.keyboard.up('Shift');
  await keyboard.focus();
  await page.waitForTimeout(300);
  await page.keyboard.press('Enter');
  await addressShows(page, /\/result\?value=/);
  const [value, held, record] = new URL(await address.inputValue()).searchParams.get('value').split('|');
  assert.equal(value, '日本語éà');
  assert.equal(held, '', 'no key is held after the viewer lost focus');
  assert.match(record, /touchstart1,touchend/);
  assert.match(record, /compose/);

  // Copy: a triple click selects the result's paragraph, Control+C copies
  // it to this device, and the audit log records it.
  box = await image.boundingBox();
  await page.mouse.click(box.x + 80 * scale, box.y + 55 * scale, { clickCount: 3 });
  await keyboard.focus();
  await page.keyboard.press('Control+c');
  await page.locator('#banner').filter({ hasText: 'Copied' }).waitFor({ timeout: 10000 });
  assert.match(await page.evaluate(() => navigator.clipboard.readText()), /Thank you\./);
  const audit = await fetch(`${url}/v1/audit?since=1&limit=1000`, { headers: { Authorization: `Bearer ${tokens.admin}` } }).then((r) => r.json());
  const copied = audit.records.filter((r) => r.kind === 'browser.clipboard_out' && r.session_id === sessionId);
  assert.equal(copied.length, 1, JSON.stringify(copied));

  // A tap on a link follows it, as a click would.
  await address.fill(`${origin}/input`);
  await address.press('Enter');
  await addressShows(page, `${origin}/input`);
  await page.waitForTimeout(500);
  await page.touchscreen.tap(box.x + 300 * scale, box.y + 330 * scale);
  await addressShows(page, `${origin}/result?value=tapped`);

  await page.locator('#end-session').click();
  await page.locator('#end-session').click();
  await page.locator('#ended').waitFor({ timeout: 15000 });
  await context.close();
});

test('signing out ends the browser session', async () => {
  const { context, page } = await signedIn('bob');
  const other = await context.newPage();
  await other.goto(`${url}/#/sessions`);
  await other.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/#\/signin$/);
  await page.goto(`${url}/#/sessions`);
  await page.waitForURL(/#\/signin$/);
  const status = await page.evaluate(() => fetch('/v1/me').then((r) => r.status));
  assert.equal(status, 401);
  // The other tab of the same browser follows.
  await other.waitForURL(/#\/signin$/);
  await other.locator('#signin-error').filter({ hasText: 'another tab' }).waitFor();
  await context.close();
});

/** Runs axe-core's WCAG 2.1 A and AA rules on the page; returns the violations. */
async function accessibilityViolations(page) {
  const source = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
  await page.evaluate(source);
  const result = await page.evaluate(() => window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } }));
  return result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
}

test('the main pages pass an accessibility scan', async () => {
  // axe-core is injected as a script, which the console's own policy
  // forbids, so this browser profile ignores the policy.
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 }, bypassCSP: true });
  const page = await context.newPage();
  await page.goto(`${url}/#/signin`);
  await page.locator('#token').waitFor();
  const found = { signin: await accessibilityViolations(page) };
  await page.locator('#token').fill(tokens.admin);
  await page.keyboard.press('Enter');
  await page.locator('li[data-profile="quick"]').waitFor();
  found.sessions = await accessibilityViolations(page);
  await page.locator('li[data-profile="quick"]').getByRole('button', { name: 'Launch quick' }).click();
  await waitForTerminalText(page, PROMPT);
  found.terminal = await accessibilityViolations(page);
  await page.locator('#end-session').click();
  await page.locator('#end-session').click();
  await page.locator('#ended').waitFor({ timeout: 10000 });
  found.ended = await accessibilityViolations(page);
  await page.goto(`${url}/#/admin`);
  await page.locator('#audit-intact').waitFor();
  found.admin = await accessibilityViolations(page);
  await context.close();
  assert.deepEqual(found, { signin: [], sessions: [], terminal: [], ended: [], admin: [] });
});

test('browser session files: kept download, upload and print', async () => {
  const origin = required('MAYFLY_ORIGIN');
  const { context, page } = await signedIn('alice');
  await page.locator('li[data-profile="files"]').getByRole('button', { name: 'Launch files' }).click();
  await page.waitForURL(/#\/sessions\/s-[0-9a-f]+$/);
  const id = page.url().split('/').pop();
  await page.waitForFunction(() => document.getElementById('screen-image')?.naturalWidth > 0, null, { timeout: 30000 });
  const address = page.locator('#address');
  // A navigation sent before the start page opens would be replaced by it.
  await page.waitForFunction((expected) => document.getElementById('address').value === expected, `${origin}/`, { timeout: 15000 });

  // The profile keeps downloads and lets them be fetched: the viewer lists
  // the download under its sanitized name, with a link that saves it.
  await address.fill(`${origin}/download`);
  await address.press('Enter');
  const link = page.locator('#downloads-list a.download-link');
  await link.waitFor({ timeout: 15000 });
  assert.match(await page.locator('#downloads-list li').first().innerText(), /_\.\._report\.txt\s+17 B\s+complete/);
  const [saved] = await Promise.all([page.waitForEvent('download'), link.click()]);
  assert.equal(saved.suggestedFilename(), '_.._report.txt');
  assert.equal(readFileSync(await saved.path(), 'utf8'), 'quarterly numbers');
  await shot(page, '14-browser-download-kept');

  // The page's file input opens a chooser in the console, and the file
  // picked there reaches the page.
  await address.fill(`${origin}/upload`);
  await address.press('Enter');
  await page.waitForFunction((expected) => document.getElementById('address').value === expected, `${origin}/upload`, { timeout: 15000 });
  const input = page.locator('#upload-input');
  for (let attempt = 0; attempt < 10 && !(await input.isVisible()); attempt += 1) {
    await page.locator('#screen-image').click({ position: { x: 50, y: 50 } });
    await page.waitForTimeout(500);
  }
  await shot(page, '15-browser-file-chooser');
  await input.setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello from the device') });
  await page.locator('#upload-status').filter({ hasText: 'Given to the page: notes.txt (21 B)' }).waitFor({ timeout: 15000 });
  await page.waitForFunction(() => document.getElementById('address').value.includes('/result?value='), null, { timeout: 15000 });
  assert.equal(new URL(await address.inputValue()).searchParams.get('value'), 'notes.txt:21');

  // Print saves the page as a PDF on this device.
  const [pdf] = await Promise.all([page.waitForEvent('download'), page.locator('#print-page').click()]);
  assert.equal(pdf.suggestedFilename(), `${id}.pdf`);
  assert.equal(readFileSync(await pdf.path()).subarray(0, 5).toString(), '%PDF-');

  const audit = await fetch(`${url}/v1/audit?since=1&limit=1000`, { headers: { Authorization: `Bearer ${tokens.admin}` } }).then((r) => r.json());
  const kinds = audit.records.filter((r) => r.session_id === id).map((r) => r.kind);
  for (const kind of ['browser.download_kept', 'browser.download_fetched', 'browser.upload', 'browser.print']) {
    assert.ok(kinds.includes(kind), `the audit log has ${kind} for ${id}: ${kinds.join(', ')}`);
  }

  await page.locator('#end-session').click();
  await page.locator('#end-session').click();
  await page.locator('#ended').waitFor({ timeout: 15000 });
  await context.close();
});

test('no page broke the Content-Security-Policy or threw', () => {
  assert.deepEqual(violations, []);
});
