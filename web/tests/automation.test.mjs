// The DevTools endpoint of browser sessions, driven by Playwright and
// Puppeteer against a real server. The Rust test
// crates/mayfly/tests/automation.rs starts `mayfly serve` with two browser
// profiles, `auto` (transfer.automation = true, egress to the origin) and
// `plain` (no automation), and runs this file with node --test.
//
// Environment: MAYFLY_URL, MAYFLY_ADMIN_TOKEN, MAYFLY_ALICE_TOKEN,
// MAYFLY_BOB_TOKEN, MAYFLY_ORIGIN (the test's web server, reachable from
// the `auto` profile's browser) and MAYFLY_SCREENSHOTS (a directory).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

const url = required('MAYFLY_URL');
const origin = required('MAYFLY_ORIGIN');
const tokens = { admin: required('MAYFLY_ADMIN_TOKEN'), alice: required('MAYFLY_ALICE_TOKEN'), bob: required('MAYFLY_BOB_TOKEN') };
const screenshots = required('MAYFLY_SCREENSHOTS');
mkdirSync(screenshots, { recursive: true });

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run this file through cargo test --test automation`);
  return value;
}

/** Sessions the tests created, deleted at the end. */
const created = [];

after(async () => {
  for (const id of created) await api('DELETE', `/v1/sessions/${id}`, tokens.admin);
});

async function api(method, path, token, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body) headers['Content-Type'] = 'application/json';
  const response = await fetch(`${url}${path}`, { method, headers, body: body && JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

/** Creates a session as `user` and returns its id and attach token. */
async function createSession(user, body) {
  const { status, body: answer } = await api('POST', '/v1/sessions', tokens[user], { ttl: '10m', ...body });
  assert.equal(status, 201, JSON.stringify(answer));
  created.push(answer.session.id);
  return { id: answer.session.id, attachToken: answer.attach.token };
}

function endpoint(id) {
  return `${url.replace(/^http/, 'ws')}/v1/sessions/${id}/devtools`;
}

const alice = { Authorization: `Bearer ${tokens.alice}` };

/**
 * Sends a WebSocket handshake to `path` and returns the status, with the
 * problem details of a rejection. An accepted upgrade is closed at once.
 */
function handshake(path, headers) {
  return new Promise((resolve, reject) => {
    const request = http.request(`${url}${path}`, {
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
        ...headers,
      },
    });
    request.on('upgrade', (response, socket) => {
      socket.destroy();
      resolve({ status: response.statusCode });
    });
    request.on('response', (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, type: response.headers['content-type'], problem: JSON.parse(text) }));
    });
    request.on('error', reject);
    request.end();
  });
}

async function waitForRunning(id) {
  for (let i = 0; i < 200; i += 1) {
    const { body } = await api('GET', `/v1/sessions/${id}`, tokens.admin);
    if (body.state === 'running') return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`session ${id} did not reach running`);
}

async function auditRecords() {
  const { status, body } = await api('GET', '/v1/audit?since=1&limit=1000', tokens.admin);
  assert.equal(status, 200, JSON.stringify(body));
  return body.records;
}

function savePng(name, bytes) {
  assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${name} is a PNG`);
  assert.ok(bytes.length > 1000, `${name} holds a picture: ${bytes.length} bytes`);
  writeFileSync(join(screenshots, `${name}.png`), bytes);
}

let shared;
/** Returns the one session of the `auto` profile, which Playwright, then Puppeteer use. */
async function automationSession() {
  if (!shared) {
    shared = await createSession('alice', { profile: 'auto' });
    await waitForRunning(shared.id);
  }
  return shared;
}

test('Playwright drives the browser through connectOverCDP', async () => {
  const { id } = await automationSession();
  const browser = await chromium.connectOverCDP(endpoint(id), { headers: alice });
  const context = browser.contexts()[0];
  assert.ok(context, 'the default context is there');
  // The session's first page is the one its viewer shows.
  const page = context.pages()[0] ?? await context.newPage();

  await page.goto(`${origin}/`);
  assert.equal(await page.title(), 'Automation home');
  assert.equal(await page.locator('#greeting').innerText(), 'Hello from the origin');

  await page.goto(`${origin}/form`);
  await page.locator('#name').fill('Ada Lovelace');
  await page.locator('#send').click();
  await page.waitForURL(/\/result\?/);
  assert.equal(await page.locator('#result').innerText(), 'Thank you, Ada Lovelace');
  savePng('playwright-result', await page.screenshot());

  // Calls that would end the browser or read the host are rejected, and
  // the browser goes on working.
  const cdp = await browser.newBrowserCDPSession();
  await assert.rejects(cdp.send('Browser.close'), /Mayfly rejects Browser\.close/);
  await assert.rejects(cdp.send('SystemInfo.getInfo'), /Mayfly rejects SystemInfo\.getInfo/);
  await assert.rejects(cdp.send('Browser.crash'), /Mayfly rejects Browser\.crash/);
  assert.equal(await page.title(), 'Result');

  // The profile's download policy applies whatever the client sets: the
  // download is refused and audited.
  await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: '/work' });
  await page.goto(`${origin}/`);
  await page.locator('#download').click();
  let refused = [];
  for (let i = 0; i < 100 && refused.length === 0; i += 1) {
    refused = (await auditRecords()).filter((r) => r.kind === 'browser.download_refused' && r.session_id === id);
    if (refused.length === 0) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(refused.length, 1, 'the download was refused and audited');
  await browser.close();

  const { status, body } = await api('GET', `/v1/sessions/${id}`, tokens.alice);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.state, 'running', 'the session outlives the client');
});

test('Puppeteer drives the browser through connect', async () => {
  const { id } = await automationSession();
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint(id), headers: alice, defaultViewport: { width: 900, height: 600 } });
  const page = await browser.newPage();
  await page.goto(`${origin}/form`);
  assert.equal(await page.title(), 'Form');
  await page.type('#name', 'Grace Hopper');
  await Promise.all([page.waitForNavigation(), page.click('#send')]);
  assert.equal(await page.$eval('#result', (node) => node.textContent), 'Thank you, Grace Hopper');
  savePng('puppeteer-result', Buffer.from(await page.screenshot()));
  await page.close();
  await browser.disconnect();
});

test('the endpoint rejects whoever may not automate the session', async () => {
  const { id, attachToken } = await automationSession();
  const path = `/v1/sessions/${id}/devtools`;

  const wrong = await handshake(path, { Authorization: 'Bearer mfy_AAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.type, 'application/problem+json');
  assert.equal(wrong.problem.type, 'urn:mayfly:problem:unauthenticated');
  await assert.rejects(chromium.connectOverCDP(endpoint(id), { headers: { Authorization: 'Bearer mfy_AAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }, timeout: 10000 }), /401/);

  const bob = await handshake(path, { Authorization: `Bearer ${tokens.bob}` });
  assert.equal(bob.status, 403, JSON.stringify(bob.problem));
  assert.equal(bob.problem.type, 'urn:mayfly:problem:forbidden');
  assert.equal(bob.problem.action, 'automate_session');

  const plain = await createSession('alice', { profile: 'plain' });
  const notAllowed = await handshake(`/v1/sessions/${plain.id}/devtools`, alice);
  assert.equal(notAllowed.status, 403, JSON.stringify(notAllowed.problem));
  assert.equal(notAllowed.problem.type, 'urn:mayfly:problem:automation-not-allowed');
  assert.match(notAllowed.problem.detail, /profile "plain"/);
  assert.match(notAllowed.problem.detail, /transfer\.automation/);
  await assert.rejects(chromium.connectOverCDP(endpoint(plain.id), { headers: alice, timeout: 10000 }), /403/);

  const job = await createSession('alice', { command: ['/bin/sleep', '60'] });
  const notBrowser = await handshake(`/v1/sessions/${job.id}/devtools`, alice);
  assert.equal(notBrowser.status, 400, JSON.stringify(notBrowser.problem));
  assert.equal(notBrowser.problem.type, 'urn:mayfly:problem:not-a-browser-session');

  // A web page of another origin may not connect, with the signed-in
  // cookie or even with a token.
  const signIn = await fetch(`${url}/v1/auth/session`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token: tokens.alice }) });
  assert.equal(signIn.status, 201);
  const cookie = signIn.headers.get('set-cookie').split(';')[0];
  const foreign = 'http://127.0.0.1:9';
  const withCookie = await handshake(path, { Cookie: cookie, Origin: foreign });
  assert.equal(withCookie.status, 403, JSON.stringify(withCookie.problem));
  assert.equal(withCookie.problem.type, 'urn:mayfly:problem:cross-origin');
  const withToken = await handshake(path, { ...alice, Origin: foreign });
  assert.equal(withToken.status, 403, JSON.stringify(withToken.problem));
  assert.equal(withToken.problem.type, 'urn:mayfly:problem:cross-origin');

  // An attach token of this session works in the query, for clients that
  // cannot set headers; one of another session does not.
  assert.equal((await handshake(`${path}?token=${attachToken}`, {})).status, 101);
  assert.equal((await handshake(`${path}?token=${plain.attachToken}`, {})).status, 401);

  // An ended session returns 410.
  await api('DELETE', `/v1/sessions/${plain.id}`, tokens.alice);
  const ended = await handshake(`/v1/sessions/${plain.id}/devtools`, alice);
  assert.equal(ended.status, 410, JSON.stringify(ended.problem));
  assert.equal(ended.problem.type, 'urn:mayfly:problem:session-gone');
});

test('each automation client is audited when it connects and leaves', async () => {
  const { id } = await automationSession();
  const records = (await auditRecords()).filter((r) => r.session_id === id);
  const attached = records.filter((r) => r.kind === 'browser.automation_attached');
  const detached = records.filter((r) => r.kind === 'browser.automation_detached');
  // Playwright, Puppeteer and the attach-token handshake above.
  assert.equal(attached.length, 3, JSON.stringify(attached));
  assert.equal(detached.length, 3, JSON.stringify(detached));
  for (const record of [...attached, ...detached]) assert.equal(record.actor, 'user:alice');
  assert.deepEqual(attached.map((r) => r.fields.token), [tokens.alice.slice(0, 12), tokens.alice.slice(0, 12), 'attach-token']);
  assert.ok(detached.every((r) => r.fields.reason === 'client closed' || r.fields.reason === 'client gone'), JSON.stringify(detached));
  assert.ok(detached[0].fields.commands > 10, `Playwright's commands were counted: ${JSON.stringify(detached[0])}`);
  assert.equal(detached[0].fields.rejected, 3, 'the three rejected calls were counted');
});
