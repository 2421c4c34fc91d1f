// Files in a browser session's viewer: the downloads the session keeps,
// the user's files for a page's file chooser, and printing the page to a
// PDF. What is offered follows the profile's transfer policy, which the
// attach WebSocket's first message carries.

import { apiFile } from '../api.js';
import { h, fill } from '../dom.js';

/** The first byte of a binary message that carries upload bytes. */
const UPLOAD_CHUNK = 0x20;
/** Upload bytes wait while the WebSocket has more than this queued. */
const MAX_BUFFERED = 1024 * 1024;

/** Formats a number of bytes with a binary unit: "512 B", "1.5 KiB", "10 MiB". */
export function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = unit === 0 || value >= 10 ? String(Math.round(value)) : value.toFixed(1);
  return `${text} ${units[unit]}`;
}

const STATES = {
  in_progress: 'downloading',
  completed: 'complete',
  cancelled: 'cancelled',
  too_large: 'cancelled: larger than this session allows',
  too_many: 'cancelled: this session keeps no more downloads',
};

/**
 * Creates the viewer's file parts. `connection()` returns the attach
 * WebSocket; `warn` shows a message in the page's banner. Returns the
 * elements to place (`toolbar` in the navigation bar, `panel` above the
 * screen) and `handle`, which takes each JSON message from the server and
 * returns whether it was a file message.
 */
export function fileTransfers(session, { connection, warn }) {
  const printButton = h('button', { type: 'button', id: 'print-page', hidden: true }, 'Print');
  const toolbar = h('span', { className: 'browser-files' }, printButton);
  const chooser = h('div', { id: 'file-chooser', className: 'file-chooser', role: 'group', 'aria-label': 'File requested by the page', hidden: true });
  const list = h('ul', { id: 'downloads-list' });
  const downloadsPanel = h('section', { id: 'downloads', className: 'downloads', 'aria-label': 'Downloads', hidden: true }, h('h2', {}, 'Downloads'), list);
  const panel = h('div', { className: 'browser-files-panel' }, chooser, downloadsPanel);

  let policy = { downloads: 'deny', uploads: false, printing: false };
  const downloads = new Map();
  /** The upload that waits for upload_ready: its chooser id and files. */
  let pending = null;

  function sendJson(message) {
    const socket = connection();
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  printButton.addEventListener('click', async () => {
    printButton.disabled = true;
    try {
      const blob = await apiFile('POST', `/v1/sessions/${encodeURIComponent(session.id)}/print`);
      save(blob, `${session.id}.pdf`);
    } catch (error) {
      warn(`The page could not be printed: ${error.message}`);
    } finally {
      printButton.disabled = false;
    }
  });

  /** Hands a file to the user's browser as a download. */
  function save(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = h('a', { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  function renderDownloads() {
    downloadsPanel.hidden = downloads.size === 0;
    fill(list, [...downloads.values()].map((download) => {
      const parts = [h('span', { className: 'download-name' }, download.filename), ' ',
        h('span', { className: 'download-size' }, formatBytes(download.bytes)), ' ',
        h('span', { className: 'download-state' }, STATES[download.state] || download.state)];
      if (policy.downloads === 'fetch' && download.state === 'completed') {
        const href = `/v1/sessions/${encodeURIComponent(session.id)}/downloads/${encodeURIComponent(download.id)}`;
        parts.push(' ', h('a', { href, download: download.filename, className: 'download-link' }, `Save ${download.filename}`));
      } else if (policy.downloads === 'keep' && download.state === 'completed') {
        parts.push(' ', h('span', { className: 'hint' }, 'kept in the session'));
      }
      return h('li', { 'data-download': download.id }, parts);
    }));
  }

  function closeChooser() {
    chooser.hidden = true;
    fill(chooser);
  }

  /** Offers the user's files for the page's file chooser. */
  function openChooser(message) {
    const input = h('input', { type: 'file', id: 'upload-input', multiple: message.multiple, 'aria-label': 'Files for the page' });
    const cancel = h('button', { type: 'button', className: 'secondary', id: 'upload-cancel' }, 'Cancel');
    const status = h('span', { id: 'upload-status', role: 'status' });
    cancel.addEventListener('click', () => {
      sendJson({ type: 'upload_cancel', chooser: message.chooser });
      pending = null;
      closeChooser();
    });
    input.addEventListener('change', () => {
      const files = [...input.files];
      if (files.length === 0) return;
      const large = files.find((file) => file.size > message.upload_limit_bytes);
      if (large) {
        status.textContent = `${large.name} is ${formatBytes(large.size)}; this session takes files of at most ${formatBytes(message.upload_limit_bytes)}.`;
        return;
      }
      input.disabled = true;
      status.textContent = 'Uploading…';
      pending = { chooser: message.chooser, files, chunkBytes: message.chunk_bytes };
      sendJson({ type: 'upload', chooser: message.chooser, files: files.map((file) => ({ name: file.name, size: file.size })) });
    });
    fill(chooser, h('span', {}, message.multiple ? 'The page asks for files: ' : 'The page asks for a file: '), input, ' ', cancel, ' ', status);
    chooser.hidden = false;
  }

  /** Sends the pending upload's bytes once the server is ready for them. */
  async function sendFiles(upload) {
    const socket = connection();
    for (const file of upload.files) {
      for (let offset = 0; offset < file.size; offset += upload.chunkBytes) {
        while (socket.bufferedAmount > MAX_BUFFERED) {
          if (socket.readyState !== WebSocket.OPEN) return;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        if (pending !== upload || socket.readyState !== WebSocket.OPEN) return;
        const bytes = new Uint8Array(await file.slice(offset, offset + upload.chunkBytes).arrayBuffer());
        const message = new Uint8Array(bytes.length + 1);
        message[0] = UPLOAD_CHUNK;
        message.set(bytes, 1);
        socket.send(message);
      }
    }
  }

  function handle(message) {
    switch (message.type) {
      case 'downloads':
        downloads.clear();
        for (const download of message.downloads) downloads.set(download.id, download);
        renderDownloads();
        return true;
      case 'download':
        downloads.set(message.download.id, message.download);
        renderDownloads();
        if (message.download.state === 'too_large') warn(`The download of ${message.download.filename} was cancelled: it is larger than this session allows.`);
        return true;
      case 'file_chooser':
        openChooser(message);
        return true;
      case 'upload_refused':
        warn(`The page asked for a file, and it was refused: ${message.reason}.`);
        return true;
      case 'upload_ready':
        if (pending && pending.chooser === message.chooser) sendFiles(pending);
        return true;
      case 'upload_done': {
        pending = null;
        const names = message.files.map((file) => `${file.name} (${formatBytes(file.size)})`).join(', ');
        fill(chooser, h('span', { id: 'upload-status', role: 'status' }, `Given to the page: ${names}`));
        setTimeout(closeChooser, 5000);
        return true;
      }
      case 'upload_failed':
        pending = null;
        closeChooser();
        warn(`The upload failed: ${message.message}`);
        return true;
      default:
        return false;
    }
  }

  /** Takes the policy from the session message, and the viewer's role. */
  function setPolicy(transfer, role) {
    policy = transfer || policy;
    printButton.hidden = !policy.printing;
    if (role !== 'writer') closeChooser();
    renderDownloads();
  }

  return { toolbar, panel, handle, setPolicy };
}
