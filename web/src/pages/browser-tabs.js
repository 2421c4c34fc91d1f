// The remote browser's tabs: a strip to switch, close and open them.
// Popups a page opens arrive as tabs of their own.

import { h, fill } from '../dom.js';

/** Builds the tab strip; returns it and a function that shows a `tabs` message. */
export function tabStrip(send) {
  const list = h('ul', { className: 'tab-list', id: 'tab-list' });
  const open = h('button', { type: 'button', id: 'tab-new', className: 'secondary', 'aria-label': 'New tab', onclick: () => send({ type: 'new_tab' }) }, '+');
  const strip = h('nav', { className: 'tab-strip', 'aria-label': 'Tabs of the remote browser' }, list, open);

  function show({ tabs, active }) {
    fill(list, tabs.map((tab, index) => {
      const name = tab.title || tab.url || 'New tab';
      const current = tab.id === active;
      return h('li', { className: current ? 'tab current' : 'tab', 'data-tab': tab.id },
        h('button', { type: 'button', className: 'tab-show', title: tab.url, 'aria-current': current ? 'page' : null, onclick: () => send({ type: 'switch_tab', id: tab.id }) },
          `${index + 1}. ${name.length > 40 ? `${name.slice(0, 39)}…` : name}`),
        h('button', { type: 'button', className: 'tab-close', 'aria-label': `Close tab ${index + 1}: ${name}`, onclick: () => send({ type: 'close_tab', id: tab.id }) }, '×'));
    }));
  }
  return { strip, show };
}
