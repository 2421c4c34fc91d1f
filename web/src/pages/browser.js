// A browser session's viewer: the remote page as screencast frames, its
// tabs and address bar, and the viewer's input sent back.

import { api, ApiError, attachUrl } from '../api.js';
import { h, fill } from '../dom.js';
import { formatSeconds } from '../format.js';
import { wireInput, copyToDevice } from './browser-input.js';
import { tabStrip } from './browser-tabs.js';
import { fileTransfers } from './browser-files.js';

/** The byte before each JPEG frame on the WebSocket. */
const FRAME = 0x10;

/** The transfer policy until the session's first message replaces it. */
const NOTHING_ALLOWED = { clipboard_in: false, clipboard_out: false, clipboard_limit_bytes: 0 };

/** Lays the user's name and the session id over the page, so photos of it can be traced. */
function watermarkLayer(text) {
  return h('div', { className: 'watermark', id: 'watermark', 'aria-hidden': 'true' }, Array.from({ length: 24 }, () => h('span', {}, text)));
}

/**
 * Builds the viewer into `parts` (the page's bar, banner, notice and body
 * elements) and connects. Returns a function that disconnects.
 */
export function browserView(session, parts, { showEnded, warn }) {
  const { body } = parts;
  const image = h('img', { id: 'screen-image', alt: 'The remote page', draggable: false });
  const keyboard = h('textarea', {
    id: 'remote-keyboard',
    className: 'visually-hidden',
    'aria-label': 'Keyboard input for the remote page',
    autocomplete: 'off',
    autocapitalize: 'off',
    spellcheck: 'false',
  });
  const screen = h('div', { className: 'screen', id: 'screen', role: 'application', 'aria-label': 'Remote browser. Click to type into the page; Escape then Tab leaves it.' }, image, keyboard);
  const address = h('input', { type: 'text', id: 'address', 'aria-label': 'Address', autocomplete: 'off', spellcheck: 'false' });
  const go = h('button', { type: 'submit' }, 'Go');
  const navigation = h('form', { className: 'browser-bar', 'aria-label': 'Browser navigation' },
    h('button', { type: 'button', id: 'nav-back', 'aria-label': 'Back', onclick: () => send({ type: 'back' }) }, '←'),
    h('button', { type: 'button', id: 'nav-forward', 'aria-label': 'Forward', onclick: () => send({ type: 'forward' }) }, '→'),
    h('button', { type: 'button', id: 'nav-reload', 'aria-label': 'Reload', onclick: () => send({ type: 'reload' }) }, '⟳'),
    address, go);
  const tabs = tabStrip((message) => send(message));
  navigation.addEventListener('submit', (event) => {
    event.preventDefault();
    if (address.value.trim()) send({ type: 'navigate', url: address.value.trim() });
    keyboard.focus();
  });
  const files = fileTransfers(session, { connection: () => socket, warn });
  navigation.append(files.toolbar);
  fill(body, tabs.strip, navigation, files.panel, screen);

  let socket = null;
  let ended = false;
  let frameUrl = null;
  let policy = NOTHING_ALLOWED;
  let watching = false;

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  const input = wireInput({ image, keyboard, send, policy: () => policy, warn });

  // The page's viewport follows the space the viewer has for it.
  let sizing = null;
  let sentSize = '';
  function sendViewport() {
    const width = Math.max(200, Math.floor(screen.clientWidth - 8));
    const height = Math.max(200, Math.floor(screen.clientHeight - 8));
    const size = `${width}x${height}`;
    if (size === sentSize) return;
    sentSize = size;
    send({ type: 'viewport', width, height });
  }
  const resized = new ResizeObserver(() => {
    clearTimeout(sizing);
    sizing = setTimeout(sendViewport, 250);
  });
  resized.observe(screen);

  function connect(mode) {
    socket = new WebSocket(attachUrl(session.id, mode));
    socket.binaryType = 'arraybuffer';
    socket.addEventListener('message', (event) => {
      if (typeof event.data !== 'string') {
        const bytes = new Uint8Array(event.data);
        if (bytes[0] !== FRAME) return;
        const url = URL.createObjectURL(new Blob([bytes.subarray(1)], { type: 'image/jpeg' }));
        const previous = frameUrl;
        frameUrl = url;
        image.src = url;
        if (previous) URL.revokeObjectURL(previous);
        return;
      }
      const message = JSON.parse(event.data);
      switch (message.type) {
        case 'session':
          watching = message.role === 'observer';
          parts.state.textContent = watching ? `${message.state}, watching` : message.state;
          policy = { ...NOTHING_ALLOWED, ...(message.transfer || {}) };
          files.setPolicy(message.transfer, message.role);
          screen.querySelector('.watermark')?.remove();
          if (message.watermark) screen.append(watermarkLayer(message.watermark));
          input.reset();
          sentSize = '';
          if (message.role === 'writer') sendViewport();
          keyboard.focus();
          break;
        case 'browser':
          // The session state from the first message may predate the browser's start.
          if (message.status === 'running') parts.state.textContent = watching ? 'running, watching' : 'running';
          if (message.status === 'running' && document.activeElement !== address) address.value = message.url || '';
          if (message.status === 'renderer_crashed') warn('The page crashed in the remote browser. Reload it to go on.');
          if (message.status === 'closed') warn('The remote browser closed.');
          break;
        case 'tabs':
          tabs.show(message);
          break;
        case 'clipboard':
          copyToDevice(message.text, warn);
          break;
        case 'warning':
          warn(`This session ends in ${formatSeconds(message.remaining_seconds)}. Everything in it will be destroyed.`);
          break;
        case 'error':
          warn(message.message);
          break;
        case 'download_refused':
          warn(`The download of ${message.filename} was refused: this session's profile allows no downloads.`);
          break;
        case 'end':
          ended = true;
          showEnded(message.state, message.end, message.exit_code);
          break;
        default:
          files.handle(message);
          break;
      }
    });
    socket.addEventListener('close', async (event) => {
      if (ended) return;
      // The session may have ended while the connection closed.
      try {
        const current = await api('GET', `/v1/sessions/${encodeURIComponent(session.id)}`);
        if (!['pending', 'starting', 'running'].includes(current.state)) {
          ended = true;
          showEnded(current.state, current.end, current.exit_code);
          return;
        }
      } catch (error) {
        if (error instanceof ApiError && error.status === 410) {
          ended = true;
          showEnded(error.problem.state, error.problem.end, error.problem.exit_code);
          return;
        }
      }
      const text = event.code === 4008
        ? 'The connection was too slow to keep up with the remote page.'
        : 'The connection to this browser session was lost, or another viewer controls it.';
      fill(parts.notice, h('p', { className: 'error', role: 'alert' }, text),
        h('p', {}, h('button', { type: 'button', onclick: () => connect(mode) }, 'Reconnect'), ' ',
          h('button', { type: 'button', className: 'secondary', onclick: () => connect('observe') }, 'Watch without control')));
    });
  }

  connect();
  return () => {
    ended = true;
    input.stop();
    resized.disconnect();
    clearTimeout(sizing);
    if (socket) socket.close(1000);
    if (frameUrl) URL.revokeObjectURL(frameUrl);
  };
}
