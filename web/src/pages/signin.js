// Sign-in: an API token is exchanged for a short-lived browser session.

import { api, ApiError, setCsrf } from '../api.js';
import { h } from '../dom.js';

export function signInPage(main, context) {
  const error = h('p', { className: 'error', role: 'alert', id: 'signin-error' });
  const input = h('input', {
    type: 'password',
    id: 'token',
    name: 'token',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'token-hint signin-error',
  });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { className: 'signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to Mayfly'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h('p', { className: 'hint', id: 'token-hint' }, 'An API token starts with ', h('code', {}, 'mfy_'), '. Ask your Mayfly administrator for one, or create one with ', h('code', {}, 'mayfly token create'), '. The browser keeps only a session cookie that ends within 8 hours, never the token.'),
    error,
    h('p', {}, button),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    const token = input.value.trim();
    if (!token) {
      error.textContent = 'Enter an API token.';
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      const signedIn = await api('POST', '/v1/auth/session', { token });
      setCsrf(signedIn.csrf);
      window.dispatchEvent(new CustomEvent('mayfly:signed-in'));
      input.value = '';
      await context.refreshMe();
      location.hash = '#/sessions';
    } catch (failure) {
      error.textContent = failure instanceof ApiError && failure.status === 401
        ? 'This token was not accepted: it is unknown, revoked or expired. Check it and try again.'
        : failure.message;
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  const message = sessionStorage.getItem('mayfly.signin-message');
  if (message) {
    sessionStorage.removeItem('mayfly.signin-message');
    error.textContent = message;
  }
  main.append(form);
  input.focus();
}
