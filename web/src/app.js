// The console's entry point: sign-in state, the page header and the router.
// Pages live at hash addresses (#/sessions, #/sessions/ID, #/admin), so the
// server serves one page.

import { installStyleNonce } from './nonce.js';
import { api, ApiError, setCsrf } from './api.js';
import { signInPage } from './pages/signin.js';
import { sessionsPage } from './pages/sessions.js';
import { sessionPage } from './pages/session.js';
import { adminPage } from './pages/admin.js';

installStyleNonce();

const main = document.getElementById('main');

/** The signed-in user and the server's clock, shared by the pages. */
const context = {
  me: null,
  /** Server clock minus browser clock, in milliseconds. */
  clockOffset: 0,
  now() {
    return Date.now() + this.clockOffset;
  },
  async refreshMe() {
    const sent = Date.now();
    const me = await api('GET', '/v1/me');
    const received = Date.now();
    this.clockOffset = me.now_unix_ms - (sent + received) / 2;
    setCsrf(me.csrf || null);
    this.me = me;
    showUser();
    return me;
  },
  signedOut() {
    this.me = null;
    setCsrf(null);
    localStorage.removeItem(SIGNED_IN);
    showUser();
  },
};

/** Set while this browser is signed in, so a page load without it goes
 *  straight to the sign-in page instead of probing the server. */
const SIGNED_IN = 'mayfly.signed-in';
/** Tells the other tabs of this browser about a sign-out. */
const tabs = new BroadcastChannel('mayfly');

/** Ends the page's use of a browser session that is gone. */
function signedOutHere(message) {
  if (!context.me && location.hash === '#/signin') return;
  context.signedOut();
  if (leave) {
    leave();
    leave = null;
  }
  sessionStorage.setItem('mayfly.signin-message', message);
  location.hash = '#/signin';
}

window.addEventListener('mayfly:signed-out', () => signedOutHere('Your sign-in has ended. Sign in again to go on.'));
tabs.addEventListener('message', (event) => {
  if (event.data === 'signed-out') signedOutHere('You signed out in another tab.');
});
window.addEventListener('mayfly:signed-in', () => localStorage.setItem(SIGNED_IN, '1'));

function showUser() {
  const me = context.me;
  document.getElementById('nav').hidden = !me;
  document.getElementById('who').hidden = !me;
  document.getElementById('who-name').textContent = me ? `Signed in as ${me.principal}` : '';
  document.getElementById('nav-admin').hidden = !(me && (me.may.list_all_sessions || me.may.read_audit));
}

const routes = [
  [/^#\/signin$/, signInPage, 'Sign in'],
  [/^#\/sessions$/, sessionsPage, 'Sessions'],
  [/^#\/sessions\/([A-Za-z0-9_-]{1,64})$/, sessionPage, 'Session'],
  [/^#\/admin$/, adminPage, 'Administration'],
];

let leave = null;

async function route() {
  const hash = location.hash || '#/sessions';
  if (!hash.startsWith('#/')) return; // an in-page anchor such as the skip link
  if (leave) {
    leave();
    leave = null;
  }
  if (context.me && hash === '#/signin') {
    location.replace('#/sessions');
    return;
  }
  if (!context.me && hash !== '#/signin') {
    if (!localStorage.getItem(SIGNED_IN)) {
      location.replace('#/signin');
      return;
    }
    try {
      await context.refreshMe();
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) {
        show(null, 'Error', errorPage(error));
        return;
      }
      location.replace(`#/signin`);
      return;
    }
  }

  const match = routes.map(([pattern, page, title]) => [hash.match(pattern), page, title]).find(([m]) => m);
  if (!match) {
    show(null, 'Not found', errorPage(new Error(`There is no page at ${hash}.`)));
    return;
  }

  const [params, page, title] = match;
  document.title = `${title} · Mayfly`;
  for (const link of document.querySelectorAll('.top nav a')) {
    if (hash === link.getAttribute('href')) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }

  main.className = '';
  main.replaceChildren();
  leave = (await page(main, context, ...params.slice(1))) || null;
  // Move focus to the page's heading, so a screen reader announces it.
  const heading = main.querySelector('h1');
  if (heading && !main.contains(document.activeElement)) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function errorPage(error) {
  const node = document.createElement('p');
  node.className = 'error';
  node.setAttribute('role', 'alert');
  node.textContent = error.message;
  return node;
}

function show(_, title, node) {
  document.title = `${title} · Mayfly`;
  main.replaceChildren(node);
}

document.getElementById('sign-out').addEventListener('click', async () => {
  try {
    await api('DELETE', '/v1/auth/session');
  } catch (error) {
    // The browser session may have ended already, or the server may be down; the page signs out either way.
    console.warn('sign-out', error);
  }
  context.signedOut();
  tabs.postMessage('signed-out');
  location.hash = '#/signin';
});

window.addEventListener('hashchange', route);
route();
