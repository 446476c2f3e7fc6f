// Errors are reported, not swallowed: a visible banner, and POST /ui/client-errors (the issuer logs it).
const MAX = { message: 1000, source: 300, stack: 4000, page: 300 };
let sent = 0;

function cut(value, limit) {
  if (value === undefined || value === null) return null;
  const text = String(value);
  return text.length > limit ? text.slice(0, limit) : text;
}

export function showBanner(text) {
  const banner = document.getElementById('error-banner');
  const out = document.getElementById('error-text');
  if (!banner || !out) return;
  out.textContent = text;
  banner.hidden = false;
}

export async function reportError(kind, message, detail = {}) {
  showBanner(message);
  if (sent >= 20) return; // a page stuck in an error loop stops reporting; the banner still shows
  sent += 1;
  const body = {
    kind: cut(kind, 40),
    message: cut(message, MAX.message) || 'unknown error',
    source: cut(detail.source, MAX.source),
    line: Number.isInteger(detail.line) && detail.line >= 0 ? detail.line : null,
    column: Number.isInteger(detail.column) && detail.column >= 0 ? detail.column : null,
    stack: cut(detail.stack, MAX.stack),
    page: cut(location.pathname + location.hash, MAX.page),
  };
  try {
    const response = await fetch('/ui/client-errors', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      showBanner(`${message} (the report to the issuer failed: HTTP ${response.status})`);
    }
  } catch (failure) {
    showBanner(`${message} (the report to the issuer failed: ${failure})`);
  }
}

export function installErrorReporting() {
  window.addEventListener('error', (event) => {
    const error = event.error;
    reportError('error', event.message || String(error), {
      source: event.filename,
      line: event.lineno,
      column: event.colno,
      stack: error && error.stack,
    });
  });
  window.addEventListener('unhandledrejection', (event) => {
    const reason = event.reason;
    const message = reason instanceof Error ? reason.message : String(reason);
    reportError('unhandledrejection', message, { stack: reason && reason.stack });
  });
  const dismiss = document.getElementById('error-dismiss');
  if (dismiss) {
    dismiss.addEventListener('click', () => {
      document.getElementById('error-banner').hidden = true;
    });
  }
}
