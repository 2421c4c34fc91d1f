// Builds DOM nodes without HTML strings, so no text ever becomes markup.

/**
 * Creates an element. `props` sets properties (`className`, `textContent`,
 * `hidden`, `onclick`...) and attributes for keys holding a dash or named
 * in ATTRIBUTES; `children` are nodes or strings.
 */
const ATTRIBUTES = new Set(['for', 'role', 'scope', 'colspan', 'autocomplete', 'spellcheck', 'inputmode']);

export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key.includes('-') || ATTRIBUTES.has(key)) node.setAttribute(key, value === true ? '' : String(value));
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** Replaces the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c != null && c !== false));
}
