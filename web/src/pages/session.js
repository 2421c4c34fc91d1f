// One session: a shell's terminal or a job's output, with the time left,
// the warnings before the end, and the end screen.

import { Terminal } from '../vendor/xterm.mjs';
import { FitAddon } from '../vendor/addon-fit.mjs';
import { api, ApiError, attachUrl } from '../api.js';
import { h, fill } from '../dom.js';
import { describeEnd, formatRemaining, formatSeconds, isLive } from '../format.js';
import { browserView } from './browser.js';

const encoder = new TextEncoder();

export async function sessionPage(main, context, id) {
  main.className = 'wide';
  const heading = h('h1', {}, `Session ${id}`);
  const state = h('span', { className: 'state', id: 'session-state' });
  const countdown = h('span', { className: 'countdown', id: 'countdown', role: 'timer', 'aria-live': 'off', 'aria-label': 'Time left' }, '');
  const endButton = h('button', { type: 'button', className: 'danger', id: 'end-session' }, 'End session');
  const bar = h('div', { className: 'session-bar' }, heading, state, countdown, h('span', { className: 'spacer' }), endButton,
    h('a', { className: 'button secondary', href: '#/sessions', id: 'back-link' }, 'Back to sessions'));
  const banner = h('p', { className: 'banner', id: 'banner', role: 'alert', hidden: true });
  const notice = h('div', { id: 'notice' });
  const box = h('div', { className: 'terminal-box', id: 'terminal', hidden: true });
  const hint = h('p', { className: 'hint', id: 'terminal-hint', hidden: true }, 'F6 moves the keyboard focus from the terminal to the buttons above it.');
  main.append(bar, banner, notice, box, hint);

  function warn(text) {
    banner.hidden = false;
    banner.textContent = text;
  }

  // Set before any early return, because showEnded reads them.
  let term = null;
  let socket = null;
  let ended = false;
  let replay = false;
  /** Set once a deadline warning is shown, so the banner counts down too. */
  let deadlineWarned = false;
  let session;
  try {
    session = await api('GET', `/v1/sessions/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 410 && error.problem.session?.kind === 'job') {
      // A job that ended moments ago: its output is still kept on the
      // server for a while, so attach to read it and its end.
      session = error.problem.session;
      replay = true;
    } else if (error instanceof ApiError && error.status === 410) {
      showEnded(error.problem.state, error.problem.end, error.problem.exit_code);
    } else if (error instanceof ApiError && (error.status === 404 || error.status === 403)) {
      fill(bar, heading);
      fill(notice, h('p', { className: 'error', role: 'alert' }, `You cannot open session ${id}: it does not exist, or it is not yours and your permissions do not cover it.`),
        h('p', {}, h('a', { href: '#/sessions' }, 'Back to your sessions')));
    } else {
      fill(notice, h('p', { className: 'error', role: 'alert' }, error.message));
    }
    if (!replay) return null;
  }
  if (!isLive(session.state) && !replay) {
    showEnded(session.state, session.end, session.exit_code);
    return null;
  }

  let deadline = session.deadline_unix_ms;
  let attached = false;
  if (session.kind === 'job') {
    bar.insertBefore(h('code', { className: 'command', id: 'job-command' }, session.command.join(' ')), countdown);
  }
  const shell = session.kind === 'shell';
  state.textContent = session.state;
  state.className = `state state-${session.state}`;

  function tick() {
    if (ended) return;
    const left = deadline - context.now();
    countdown.textContent = left > 0 ? `Ends in ${formatRemaining(left)}` : 'Ending';
    countdown.classList.toggle('soon', left <= 60_000);
    if (deadlineWarned) warn(`This session ends in ${formatRemaining(left)}. Everything in it will be destroyed: save what you need now.`);
  }

  let armed = false;
  endButton.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      endButton.textContent = 'Confirm: end and destroy';
      return;
    }
    endButton.disabled = true;
    try {
      await api('DELETE', `/v1/sessions/${encodeURIComponent(id)}`);
    } catch (error) {
      warn(`The session could not be ended: ${error.message}`);
      endButton.disabled = false;
    }
  });
  endButton.addEventListener('blur', () => {
    if (armed && !endButton.disabled) {
      armed = false;
      endButton.textContent = 'End session';
    }
  });

  if (session.kind === 'browser') {
    const browserBody = h('div', { className: 'browser-body', id: 'browser' });
    main.insertBefore(browserBody, box);
    const disconnect = browserView(session, { body: browserBody, notice, state }, { showEnded, warn });
    tick();
    const browserTicker = setInterval(tick, 1000);
    return () => {
      ended = true;
      clearInterval(browserTicker);
      disconnect();
    };
  }


  term = new Terminal({
    convertEol: !shell,
    disableStdin: !shell,
    cursorBlink: shell,
    fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace',
    fontSize: 15,
    scrollback: 5000,
    theme: { background: '#000000', foreground: '#e6e6e6' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  box.hidden = false;
  hint.hidden = !shell;
  term.open(box);
  fit.fit();
  term.attachCustomKeyEventHandler((event) => {
    if (event.key === 'F6') {
      if (event.type === 'keydown') endButton.focus();
      return false;
    }
    return true;
  });
  const resized = new ResizeObserver(() => {
    if (!ended) fit.fit();
  });
  resized.observe(box);

  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  term.onResize(({ rows, cols }) => sendResize(rows, cols));

  function send(bytes) {
    if (shell && socket && socket.readyState === WebSocket.OPEN) socket.send(bytes);
  }

  function sendResize(rows, cols) {
    if (shell && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'resize', rows, cols }));
  }


  function connect(mode) {
    attached = false;
    fill(notice);
    socket = new WebSocket(attachUrl(id, mode));
    socket.binaryType = 'arraybuffer';
    socket.addEventListener('message', (event) => {
      if (typeof event.data !== 'string') {
        const bytes = new Uint8Array(event.data);
        // A job's standard error (stream 2) shows in red.
        if (bytes[0] === 2 && !shell) term.write(`\x1b[31m`);
        term.write(bytes.subarray(1));
        if (bytes[0] === 2 && !shell) term.write(`\x1b[0m`);
        if (state.textContent === 'pending' || state.textContent === 'starting') state.textContent = 'running';
        return;
      }
      const message = JSON.parse(event.data);
      switch (message.type) {
        case 'session':
          attached = true;
          deadline = message.deadline_unix_ms;
          state.textContent = message.role === 'observer' ? `${message.state}, watching` : message.state;
          sendResize(term.rows, term.cols);
          if (shell && message.role === 'writer') term.focus();
          break;
        case 'warning':
          deadlineWarned = true;
          warn(`This session ends in ${formatSeconds(message.remaining_seconds)}. Everything in it will be destroyed: save what you need now.`);
          break;
        case 'idle_warning':
          warn(`No input for a while: the idle timeout ends this session in ${formatSeconds(message.remaining_seconds)}, before its deadline, unless you type something.`);
          break;
        case 'dropped':
          warn('Some output was skipped because the connection could not keep up.');
          break;
        case 'end':
          showEnded(message.state, message.end, message.exit_code);
          break;
        default:
          break;
      }
    });
    socket.addEventListener('close', () => lost(mode));
  }

  async function lost(mode) {
    if (ended) return;
    // The session may have ended while the connection was down.
    try {
      const current = await api('GET', `/v1/sessions/${encodeURIComponent(id)}`);
      if (!isLive(current.state)) {
        showEnded(current.state, current.end, current.exit_code);
        return;
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 410) {
        showEnded(error.problem.state, error.problem.end, error.problem.exit_code);
        return;
      }
    }
    let text = 'The connection to this session was lost. The session still runs until its deadline.';
    if (!attached && mode === 'observe') {
      text = 'Watching is not possible: this session\'s profile allows no observers.';
    } else if (!attached) {
      text = 'This session could not be opened here: another window or client is attached to it as its writer. Close that one and reconnect.';
    }
    fill(notice,
      h('p', { className: 'error', role: 'alert' }, text),
      h('p', {},
        h('button', { type: 'button', onclick: () => connect() }, 'Reconnect'),
        shell && mode !== 'observe' && ' ',
        shell && mode !== 'observe' && h('button', { type: 'button', className: 'secondary', onclick: () => connect('observe') }, 'Watch without typing'),
      ),
    );
  }

  function showEnded(finalState, end, exitCode) {
    ended = true;
    if (term) {
      term.options.disableStdin = true;
      term.blur();
    }
    state.textContent = finalState;
    state.className = `state state-${finalState}`;
    countdown.textContent = 'Ended';
    countdown.classList.remove('soon');
    endButton.hidden = true;
    document.getElementById('back-link')?.setAttribute('hidden', '');
    deadlineWarned = false;
    banner.hidden = true;
    hint.hidden = true;
    const title = h('h2', { id: 'ended-title', tabIndex: -1 }, 'Session ended');
    fill(notice, h('section', { className: 'ended', id: 'ended', role: 'alert', 'aria-labelledby': 'ended-title' },
      title,
      h('p', { id: 'end-reason' }, describeEnd(end, exitCode)),
      h('p', {}, 'The session and everything in it, its processes, files and memory, have been destroyed. It cannot be resumed.'),
      h('p', {}, h('a', { className: 'button', href: '#/sessions' }, 'Back to sessions')),
    ));
    title.focus();
    if (socket) socket.close(1000);
  }

  connect();
  tick();
  const ticker = setInterval(tick, 1000);
  return () => {
    ended = true;
    clearInterval(ticker);
    resized.disconnect();
    if (socket) socket.close(1000);
    term.dispose();
  };
}
