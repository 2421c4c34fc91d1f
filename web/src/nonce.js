// xterm.js adds <style> elements at run time. The Content-Security-Policy
// allows only style elements that carry this response's nonce, so every
// <style> the page creates gets the nonce of the page's own stylesheet link.

export function installStyleNonce() {
  const nonce = document.getElementById('styles')?.nonce;
  if (!nonce) return;
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function createElement(tag, options) {
    const node = create.call(this, tag, options);
    if (String(tag).toLowerCase() === 'style') node.nonce = nonce;
    return node;
  };
}
