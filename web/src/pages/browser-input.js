// The viewer's input for a remote browser: mouse, wheel, touch, keys with
// the user's own layout, IME composition, dead keys and the clipboard.
// Every key, button and finger held down is released when the viewer
// loses focus, so nothing stays pressed in the remote page.

const BUTTONS = ['left', 'middle', 'right'];

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

/**
 * Wires the input of `image` (the remote page) and `keyboard` (a hidden
 * text area that keeps the focus) to `send`. `policy()` returns the
 * session's transfer policy; `warn` shows a message.
 */
export function wireInput({ image, keyboard, send, policy, warn }) {
  const pressedKeys = new Set();
  let composing = false;

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
  let lastMove = 0;
  image.addEventListener('mousemove', (event) => {
    if (event.buttons || performance.now() - lastMove > 30) {
      lastMove = performance.now();
      mouse('move', event);
    }
  });
  image.addEventListener('contextmenu', (event) => event.preventDefault());
  image.addEventListener('wheel', (event) => {
    event.preventDefault();
    const { x, y } = point(event);
    send({ type: 'wheel', x, y, delta_x: event.deltaX, delta_y: event.deltaY, modifiers: modifiers(event) });
  }, { passive: false });

  // Touch: every message carries the fingers still on the screen.
  function touch(action, event) {
    event.preventDefault();
    keyboard.focus({ preventScroll: true });
    const points = [...event.touches].map((t) => ({ ...point(t), id: t.identifier }));
    send({ type: 'touch', action, points, modifiers: modifiers(event) });
  }
  image.addEventListener('touchstart', (event) => touch('start', event), { passive: false });
  image.addEventListener('touchmove', (event) => touch('move', event), { passive: false });
  image.addEventListener('touchend', (event) => touch('end', event), { passive: false });
  image.addEventListener('touchcancel', (event) => touch('cancel', event), { passive: false });

  keyboard.addEventListener('keydown', (event) => {
    // Keys that start or continue a composition or a dead-key sequence
    // produce their text through the composition and input events.
    if (event.isComposing || composing || event.key === 'Dead' || event.key === 'Process') return;
    if (event.key === 'Tab' && pressedKeys.has('Escape')) return; // leave the screen with the keyboard
    const printable = [...event.key].length === 1;
    const shortcut = event.ctrlKey || event.metaKey;
    const altGraph = isAltGraph(event);
    const letter = event.key.toLowerCase();
    if (printable && shortcut && !altGraph && letter === 'v') return; // let the paste event read the clipboard
    event.preventDefault();
    pressedKeys.add(event.code || event.key);
    let text = '';
    if (printable && (!shortcut || altGraph)) text = event.key;
    if (event.key === 'Enter') text = '\r';
    send({ type: 'key', action: 'down', key: event.key, code: event.code, text, key_code: event.keyCode, modifiers: modifiers(event) });
    // Copy: the page receives the shortcut, then its selection is sent back
    // for the user's clipboard when the profile allows it.
    if (printable && shortcut && !altGraph && (letter === 'c' || letter === 'x') && policy().clipboard_out) send({ type: 'copy' });
  });
  keyboard.addEventListener('keyup', (event) => {
    if (event.key === 'Dead' || event.key === 'Process') return;
    if (!pressedKeys.delete(event.code || event.key)) return;
    event.preventDefault();
    send({ type: 'key', action: 'up', key: event.key, code: event.code, key_code: event.keyCode, modifiers: modifiers(event) });
  });

  // IME composition: the remote page shows the text being composed, then
  // gets the finished text once.
  keyboard.addEventListener('compositionstart', () => {
    composing = true;
  });
  keyboard.addEventListener('compositionupdate', (event) => {
    const length = (event.data || '').length;
    send({ type: 'compose', text: event.data || '', selection_start: length, selection_end: length });
  });
  keyboard.addEventListener('compositionend', (event) => {
    composing = false;
    if (event.data) send({ type: 'text', text: event.data });
    else send({ type: 'compose', text: '' });
    keyboard.value = '';
  });
  keyboard.addEventListener('input', (event) => {
    // Dead-key and other composed characters that arrive without a keydown.
    if (!event.isComposing && !composing && event.data && event.inputType === 'insertText') send({ type: 'text', text: event.data });
    if (!event.isComposing && !composing) keyboard.value = '';
  });

  keyboard.addEventListener('paste', (event) => {
    event.preventDefault();
    const { clipboard_in: allowed, clipboard_limit_bytes: limit } = policy();
    if (!allowed) {
      warn('This session\'s profile does not allow pasting from your device.');
      return;
    }
    const text = event.clipboardData.getData('text/plain');
    if (new TextEncoder().encode(text).length > limit) {
      warn(`The clipboard holds more than ${Math.floor(limit / 1024)} KiB of text, the most this session accepts; paste less at a time.`);
      return;
    }
    if (text) send({ type: 'paste', text });
  });

  // Nothing stays pressed in the remote page after the viewer loses focus.
  function releaseAll() {
    composing = false;
    pressedKeys.clear();
    send({ type: 'release_all' });
  }
  keyboard.addEventListener('blur', releaseAll);
  const hidden = () => {
    if (document.visibilityState === 'hidden') releaseAll();
  };
  document.addEventListener('visibilitychange', hidden);

  return {
    /** Forgets what was pressed, such as when the connection starts again. */
    reset() {
      composing = false;
      pressedKeys.clear();
    },
    /** Removes the listeners that outlive the viewer. */
    stop() {
      document.removeEventListener('visibilitychange', hidden);
    },
  };
}

/** Puts text the remote page gave on the user's clipboard. */
export async function copyToDevice(text, say) {
  if (!text) {
    say('Nothing is selected in the remote page.');
    return;
  }
  try {
    await navigator.clipboard.writeText(text);
    say(`Copied ${[...text].length} characters to your clipboard.`);
  } catch (error) {
    say(`Your browser refused the clipboard: ${error.message}`);
  }
}
