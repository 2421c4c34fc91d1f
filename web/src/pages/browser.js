// A browser session's viewer: the remote page as screencast frames, with
// the viewer's mouse, wheel and keyboard sent back as input.

import { api, ApiError, attachUrl } from '../api.js';
import { h, fill } from '../dom.js';
import { formatSeconds } from '../format.js';

/** The byte before each JPEG frame on the WebSocket. */
const FRAME = 0x10;
/** The largest paste sent to the remote page, in bytes. */
const MAX_PASTE = 64 * 1024;

/** Tells whether a key event is AltGr producing a character: Windows reports AltGr as Control and Alt. */
function isAltGraph(event) {
  const printable = typeof event.key === 'string' && [...event.key].length === 1;
  return Boolean(event.getModifierState && event.getModifierState('AltGraph')) || (printable && event.ctrlKey && event.altKey);
}

/** DevTools modifier bits: Alt 1, Control 2, Meta 4, Shift 8. */
function modifiers(event) {
  // The character AltGr produced is in event.key already, so its Control
  // and Alt do not count; the remote page would take them as a shortcut.
  const altGraph = isAltGraph(event);
  return (event.altKey && !altGraph ? 1 : 0) | (event.ctrlKey && !altGraph ? 2 : 0) | (event.metaKey ? 4 : 0) | (event.shiftKey ? 8 : 0);
}

const BUTTONS = ['left', 'middle', 'right'];

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
  navigation.addEventListener('submit', (event) => {
    event.preventDefault();
    if (address.value.trim()) send({ type: 'navigate', url: address.value.trim() });
    keyboard.focus();
  });
  fill(body, navigation, screen);

  let socket = null;
  let ended = false;
  let frameUrl = null;
  const pressedKeys = new Set();

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function point(event) {
    const rect = image.getBoundingClientRect();
    const width = image.naturalWidth || rect.width;
    const height = image.naturalHeight || rect.height;
    return { x: ((event.clientX - rect.left) / rect.width) * width, y: ((event.clientY - rect.top) / rect.height) * height };
  }

  function mouse(action, event) {
    const { x, y } = point(event);
    send({ type: 'mouse', action, x, y, button: action === 'move' ? 'none' : BUTTONS[event.button] || 'none', buttons: event.buttons, click_count: action === 'move' ? 0 : Math.max(1, event.detail || 1), modifiers: modifiers(event) });
  }

  image.addEventListener('mousedown', (event) => {
    event.preventDefault();
    keyboard.focus();
    mouse('down', event);
  });
  image.addEventListener('mouseup', (event) => mouse('up', event));
  image.addEventListener('mousemove', (event) => {
    if (event.buttons || performance.now() - (image.lastMove || 0) > 30) {
      image.lastMove = performance.now();
      mouse('move', event);
    }
  });
  image.addEventListener('contextmenu', (event) => event.preventDefault());
  image.addEventListener('wheel', (event) => {
    event.preventDefault();
    const { x, y } = point(event);
    send({ type: 'wheel', x, y, delta_x: event.deltaX, delta_y: event.deltaY, modifiers: modifiers(event) });
  }, { passive: false });

  keyboard.addEventListener('keydown', (event) => {
    if (event.isComposing || event.key === 'Dead' || event.key === 'Process') return;
    if (event.key === 'Tab' && pressedKeys.has('Escape')) return; // leave the screen with the keyboard
    const printable = event.key.length === 1 || [...event.key].length === 1;
    const shortcut = event.ctrlKey || event.metaKey;
    const altGraph = isAltGraph(event);
    if (printable && shortcut && !altGraph && (event.key === 'v' || event.key === 'V')) return; // let the paste event read the clipboard
    event.preventDefault();
    pressedKeys.add(event.key);
    let text = '';
    if (printable && (!shortcut || altGraph)) text = event.key;
    if (event.key === 'Enter') text = '\r';
    send({ type: 'key', action: 'down', key: event.key, code: event.code, text, key_code: event.keyCode, modifiers: modifiers(event) });
  });
  keyboard.addEventListener('keyup', (event) => {
    if (event.key === 'Dead' || event.key === 'Process') return;
    pressedKeys.delete(event.key);
    event.preventDefault();
    send({ type: 'key', action: 'up', key: event.key, code: event.code, key_code: event.keyCode, modifiers: modifiers(event) });
  });
  keyboard.addEventListener('compositionend', (event) => {
    if (event.data) send({ type: 'text', text: event.data });
    keyboard.value = '';
  });
  keyboard.addEventListener('input', (event) => {
    // Dead-key and other composed characters that arrive without a keydown.
    if (!event.isComposing && event.data && event.inputType === 'insertText') send({ type: 'text', text: event.data });
    if (!event.isComposing) keyboard.value = '';
  });
  keyboard.addEventListener('paste', (event) => {
    event.preventDefault();
    const text = event.clipboardData.getData('text/plain');
    if (new TextEncoder().encode(text).length > MAX_PASTE) {
      warn(`The clipboard holds more than ${MAX_PASTE / 1024} KiB of text; paste less at a time.`);
      return;
    }
    if (text) send({ type: 'text', text });
  });
  // No key stays pressed in the remote page after the viewer loses focus.
  keyboard.addEventListener('blur', () => {
    for (const key of pressedKeys) send({ type: 'key', action: 'up', key, code: '', key_code: 0, modifiers: 0 });
    pressedKeys.clear();
  });

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
          parts.state.textContent = message.role === 'observer' ? `${message.state}, watching` : message.state;
          sentSize = '';
          if (message.role === 'writer') sendViewport();
          keyboard.focus();
          break;
        case 'browser':
          if (message.status === 'running' && document.activeElement !== address) address.value = message.url || '';
          if (message.status === 'renderer_crashed') warn('The page crashed in the remote browser. Reload it to go on.');
          if (message.status === 'closed') warn('The remote browser closed.');
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
    resized.disconnect();
    clearTimeout(sizing);
    if (socket) socket.close(1000);
    if (frameUrl) URL.revokeObjectURL(frameUrl);
  };
}
