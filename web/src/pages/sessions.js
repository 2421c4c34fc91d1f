// The user's page: the profiles they may launch and their own sessions.

import { api } from '../api.js';
import { h, fill } from '../dom.js';
import { liveSessionsTable } from '../sessions-table.js';

export async function sessionsPage(main, context) {
  const launch = h('ul', { className: 'card-list', 'aria-label': 'Profiles' });
  const mine = h('div', { id: 'my-sessions' });
  main.append(
    h('h1', {}, 'Sessions'),
    h('section', { 'aria-labelledby': 'launch-title' }, h('h2', { id: 'launch-title' }, 'Launch a session'), launch),
    h('section', { 'aria-labelledby': 'mine-title' }, h('h2', { id: 'mine-title' }, 'Your sessions'), mine),
  );
  const stop = liveSessionsTable(mine, context, {
    query: `owner=${encodeURIComponent(context.me.principal)}&order=newest&limit=50`,
    showOwner: false,
    caption: 'Your sessions',
  });
  try {
    const { profiles } = await api('GET', '/v1/profiles');
    const usable = profiles.filter((p) => !p.error && p.may_launch && ['shell', 'job', 'browser'].includes(p.kind));
    if (usable.length === 0) fill(launch, h('li', { className: 'empty' }, 'No profile may be launched with your permissions.'));
    else fill(launch, usable.map((profile) => profileCard(profile)));
  } catch (error) {
    fill(launch, h('li', { className: 'error', role: 'alert' }, `The profiles could not be loaded: ${error.message}`));
  }
  return stop;
}

/** Splits a command line on spaces; single or double quotes keep spaces in an argument. */
export function splitCommand(text) {
  const words = [];
  let word = null;
  let quote = null;
  for (const char of text) {
    if (quote) {
      if (char === quote) quote = null;
      else word += char;
    } else if (char === '"' || char === "'") {
      quote = char;
      word = word ?? '';
    } else if (/\s/.test(char)) {
      if (word !== null) words.push(word);
      word = null;
    } else {
      word = (word ?? '') + char;
    }
  }
  if (quote) throw new Error(`The command has an unclosed ${quote} quote.`);
  if (word !== null) words.push(word);
  return words;
}

function profileCard(profile) {
  const id = `profile-${profile.name}`;
  const error = h('p', { className: 'error', role: 'alert', id: `${id}-error` });
  const ttl = h('input', { type: 'text', id: `${id}-ttl`, name: 'ttl', placeholder: profile.default_ttl, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': `${id}-ttl-hint ${id}-error` });
  const command = profile.kind === 'job'
    ? h('input', { type: 'text', id: `${id}-command`, name: 'command', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: '/bin/echo hello' })
    : null;
  const button = h('button', { type: 'submit' }, `Launch ${profile.name}`);
  const form = h('form', { 'aria-label': `Launch a ${profile.kind} session with the ${profile.name} profile` },
    command && h('label', { for: `${id}-command` }, 'Command'),
    command,
    command && h('p', { className: 'hint', id: `${id}-command-hint` }, 'Split on spaces; quotes keep spaces inside one argument. No shell runs it: for pipes or $VARIABLES use ', h('code', {}, "/bin/sh -c '...'"), '.'),
    h('label', { for: `${id}-ttl` }, 'Time to live'),
    ttl,
    h('p', { className: 'hint', id: `${id}-ttl-hint` }, `Such as 90s, 15m or 1h. Default ${profile.default_ttl}, at most ${profile.max_ttl}. The session and everything in it is destroyed at the end.`),
    error,
    h('div', { className: 'actions' }, button),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    const request = { profile: profile.name };
    if (ttl.value.trim()) request.ttl = ttl.value.trim();
    if (command) {
      try {
        request.command = splitCommand(command.value);
      } catch (failure) {
        error.textContent = failure.message;
        return;
      }
      if (request.command.length === 0) {
        error.textContent = 'Enter the command to run, such as /bin/echo hello.';
        command.focus();
        return;
      }
    }
    button.disabled = true;
    try {
      const created = await api('POST', '/v1/sessions', request);
      location.hash = `#/sessions/${created.session.id}`;
    } catch (failure) {
      error.textContent = `The session was not started: ${failure.message}`;
      button.disabled = false;
    }
  });
  return h('li', { className: 'card', 'data-profile': profile.name },
    h('h3', {}, profile.name, ' ', h('span', { className: 'kind' }, { shell: 'shell', job: 'job', browser: 'browser' }[profile.kind])),
    h('p', { className: 'hint' }, profile.description || { shell: 'Interactive shell', job: 'One-shot job', browser: 'Remote browser' }[profile.kind]),
    form,
  );
}
