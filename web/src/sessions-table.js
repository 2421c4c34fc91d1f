// A table of sessions with their state and the time left, kept current.

import { api } from './api.js';
import { h, fill } from './dom.js';
import { describeEnd, formatRemaining, formatTime, isLive } from './format.js';

/**
 * Renders the sessions `query` lists into `container` and refreshes them
 * every few seconds. Returns a function that stops the refresh.
 */
export function liveSessionsTable(container, context, { query, showOwner, caption }) {
  let sessions = [];
  let failure = '';
  const countdowns = [];

  let shownKey = null;

  async function load() {
    try {
      const page = await api('GET', `/v1/sessions?${query}`);
      sessions = page.sessions;
      failure = '';
    } catch (error) {
      failure = `The session list could not be loaded: ${error.message}`;
    }
    // Rebuilding the table would move the keyboard focus; do it only when
    // something changed, and put the focus back on the same control.
    const key = JSON.stringify([failure, sessions]);
    if (key === shownKey) return;
    shownKey = key;
    const focused = document.activeElement;
    const focusedLabel = container.contains(focused) ? focused.getAttribute('aria-label') || focused.textContent : null;
    const focusedRow = focusedLabel && focused.closest('tr')?.dataset.session;
    render();
    if (focusedRow) {
      const again = [...container.querySelectorAll(`tr[data-session="${focusedRow}"] a, tr[data-session="${focusedRow}"] button`)]
        .find((node) => (node.getAttribute('aria-label') || node.textContent) === focusedLabel);
      again?.focus();
    }
  }

  function render() {
    countdowns.length = 0;
    if (failure) {
      fill(container, h('p', { className: 'error', role: 'alert' }, failure));
      return;
    }
    if (sessions.length === 0) {
      fill(container, h('p', { className: 'empty' }, 'No sessions yet.'));
      return;
    }
    const head = h('tr', {},
      h('th', { scope: 'col' }, 'Session'),
      showOwner && h('th', { scope: 'col' }, 'Owner'),
      h('th', { scope: 'col' }, 'Profile'),
      h('th', { scope: 'col' }, 'State'),
      h('th', { scope: 'col' }, 'Time left or end'),
      h('th', { scope: 'col' }, h('span', { className: 'visually-hidden' }, 'Actions')),
    );
    const rows = sessions.map((session) => row(session));
    fill(container, h('table', {}, h('caption', { className: 'visually-hidden' }, caption), h('thead', {}, head), h('tbody', {}, rows)));
    tick();
  }

  function row(session) {
    const live = isLive(session.state);
    const time = h('td', {});
    if (live) countdowns.push([time, session.deadline_unix_ms]);
    else time.textContent = `${describeEnd(session.end, session.exit_code)} ${formatTime(session.ended_unix_ms)}`;
    const actions = h('td', { className: 'actions' });
    if (live) {
      actions.append(h('a', { className: 'button secondary', href: `#/sessions/${session.id}` }, { shell: 'Open terminal', job: 'Open output', browser: 'Open browser' }[session.kind]));
      actions.append(endButton(session));
    }
    return h('tr', { 'data-session': session.id },
      h('td', {}, h('a', { className: 'mono', href: `#/sessions/${session.id}` }, session.id)),
      showOwner && h('td', {}, session.owner),
      h('td', {}, session.profile === session.kind ? session.profile : `${session.profile} (${session.kind})`),
      h('td', { className: `state state-${session.state}` }, session.state),
      time,
      actions,
    );
  }

  function endButton(session) {
    const button = h('button', { type: 'button', className: 'danger', 'aria-label': `End session ${session.id}` }, 'End');
    let armed = false;
    button.addEventListener('click', async () => {
      if (!armed) {
        armed = true;
        button.textContent = 'Confirm end';
        button.setAttribute('aria-label', `Confirm: end session ${session.id} and destroy everything in it`);
        return;
      }
      button.disabled = true;
      try {
        await api('DELETE', `/v1/sessions/${encodeURIComponent(session.id)}`);
      } catch (error) {
        failure = `Session ${session.id} could not be ended: ${error.message}`;
      }
      shownKey = null;
      await load();
    });
    button.addEventListener('blur', () => {
      if (armed && !button.disabled) {
        armed = false;
        button.textContent = 'End';
        button.setAttribute('aria-label', `End session ${session.id}`);
      }
    });
    return button;
  }

  function tick() {
    for (const [cell, deadline] of countdowns) {
      const left = deadline - context.now();
      cell.textContent = left > 0 ? `Ends in ${formatRemaining(left)}` : 'Ending';
    }
  }

  load();
  const ticker = setInterval(tick, 1000);
  // Every list request is an audited policy decision, so the list refreshes
  // slowly, and only while the page is visible.
  const refresher = setInterval(() => {
    if (document.visibilityState === 'visible') load();
  }, 10000);
  return () => {
    clearInterval(ticker);
    clearInterval(refresher);
  };
}
