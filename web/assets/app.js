// switchboard web: the list of containers, and a terminal attached to one of them over
// the gateway's WebSocket (the Kubernetes streaming protocol, v5.channel.k8s.io).
//
// Output positions: the gateway says where the output starts ({"position": P}, a text
// frame, because we ask with `from=`); every output byte after it is one position more.
// A terminal's first attachment asks for a redraw of its screen (`screen=1`), which
// comes before that frame (the redraw has no position).
// A dropped connection attaches again from the next byte's position, so nothing is lost
// that the switchboard still keeps, and nothing comes twice.
'use strict';

const STDIN = 0, STDOUT = 1, STDERR = 2, ERROR = 3, RESIZE = 4, CLOSE = 255;
const encoder = new TextEncoder();
const $ = (id) => document.getElementById(id);

let current = null; // the open attachment, if any

function setState(text, kind) {
  const el = $('state');
  el.textContent = text;
  el.className = kind || '';
}

// ---- the list ----------------------------------------------------------------------

async function refreshList() {
  if (current) return;
  let list;
  try {
    const r = await fetch('/api/v1/containers', { cache: 'no-store' });
    if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
    list = await r.json();
  } catch (e) {
    $('error').hidden = false;
    $('error').textContent = `Could not list the containers: ${e.message}`;
    return;
  }
  $('error').hidden = true;
  $('empty').hidden = list.length > 0;
  const body = $('list').tBodies[0];
  body.replaceChildren(...list.map(row));
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(c) {
  const tr = document.createElement('tr');
  tr.dataset.id = c.id;
  const status = c.status === 'exited' ? c.ended : c.status;
  tr.append(cell(c.id, 'id'), cell(c.command.join(' '), 'command'), cell(status, c.status),
            cell(c.clients == null ? '' : String(c.clients)));
  const td = document.createElement('td');
  const b = document.createElement('button');
  b.textContent = c.status === 'running' ? 'Attach' : 'Show';
  b.onclick = () => { location.hash = `#/attach/${encodeURIComponent(c.id)}`; };
  td.append(b);
  tr.append(td);
  return tr;
}

// ---- a terminal ----------------------------------------------------------------------

class Attachment {
  constructor(id, tty) {
    this.id = id;
    this.tty = tty;
    this.position = null;   // of the next output byte, once the gateway said
    this.ended = false;     // the container ended (the gateway said how)
    this.detached = false;  // we left
    this.stdin = true;      // false once another client holds it
    this.conflicts = 0;     // 409s in a row (a client that just left may still hold it)
    this.retries = 0;       // connections in a row that dropped or were refused
    this.refused = 0;       // connections in a row that never opened
    this.lastFrom = null;   // where the last connection asked to start (for tests)
    this.ws = null;
    // One UTF-8 decoder per output channel: a character split across two messages of
    // one stream must not meet the other stream's bytes in between.
    this.decoders = { [STDOUT]: new TextDecoder(), [STDERR]: new TextDecoder() };
    const term = new Terminal({
      convertEol: !tty, cursorBlink: tty, scrollback: 10000,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace', fontSize: 14,
    });
    this.fit = new FitAddon.FitAddon();
    term.loadAddon(this.fit);
    term.open($('terminal'));
    this.term = term;
    window.sbTerm = term; // for tests and the console
    this.observer = new ResizeObserver(() => this.fitNow());
    this.observer.observe($('terminal'));
    this.fitNow();
    if (tty) {
      term.onData((data) => this.send(STDIN, encoder.encode(data)));
      term.focus();
    } else {
      $('line').hidden = false;
      $('eof').hidden = false;
      $('line-text').focus();
    }
    term.onResize(() => this.sendSize());
    // A terminal starts at the newest output (old screen bytes would garble it); pipes
    // start with what the switchboard kept.
    this.connect(tty ? 'live' : 'kept');
  }

  fitNow() {
    try { this.fit.fit(); } catch (e) { /* not laid out yet */ }
  }

  connect(from) {
    const q = new URLSearchParams({
      stdin: this.stdin ? '1' : '0', stdout: '1', stderr: this.tty ? '0' : '1',
      tty: this.tty ? '1' : '0', from,
    });
    if (this.tty && from === 'live') {
      // The container's terminal takes our size, then its screen is redrawn for us.
      q.set('screen', '1');
      q.set('rows', String(this.term.rows));
      q.set('cols', String(this.term.cols));
    }
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/v1/containers/${encodeURIComponent(this.id)}/attach?${q}`;
    const ws = new WebSocket(url, ['v5.channel.k8s.io']);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.lastFrom = from;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.refused = 0;
      setState('attached');
      this.sendSize();
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = () => {
      if (this.ws !== ws || ws.superseded || this.ended || this.detached) return;
      this.refused = opened ? 0 : this.refused + 1;
      if (this.refused >= 5) {
        // (A gateway restarted with another token, a container removed.)
        setState('the gateway refuses to attach: reload the page from the URL switchboard web printed', 'lost');
        return;
      }
      // Dropped: attach again at the next byte (or, knowing none, at the newest output).
      this.retries += 1;
      const wait = Math.min(5000, 250 * 2 ** Math.min(this.retries, 5));
      setState(`connection lost: attaching again in ${(wait / 1000).toFixed(1)} s`, 'lost');
      this.again(ws, wait);
    };
  }

  // Attaches again after `wait` ms at the next byte's position (held while tests say).
  again(ws, wait) {
    setTimeout(() => {
      if (this.detached || this.ended || this.ws !== ws) return;
      if (window.sbHoldReconnect) return this.again(ws, 100);
      this.connect(this.position == null ? (this.tty ? 'live' : 'kept') : String(this.position));
    }, wait);
  }

  receive(data) {
    if (typeof data === 'string') {
      // Where the next output byte is: at the start, and wherever the stream moved.
      const m = JSON.parse(data);
      if (m.position !== undefined) {
        this.position = m.position;
        this.retries = 0;
      }
      if (m.restarted) this.note('the switchboard restarted: continuing with the oldest output it kept');
      if (m.skipped) this.note(`${m.skipped} bytes of output were no longer kept: they are missing here`);
      return;
    }
    const b = new Uint8Array(data);
    if (b.length === 0) return;
    const channel = b[0];
    const payload = b.subarray(1);
    if (channel === STDOUT || channel === STDERR) {
      if (this.position != null) this.position += payload.length;
      const text = this.decoders[channel].decode(payload, { stream: true });
      this.term.write(channel === STDERR ? `\x1b[31m${text}\x1b[39m` : text);
    } else if (channel === ERROR) {
      this.status(JSON.parse(new TextDecoder().decode(payload)));
    }
  }

  status(s) {
    if (s.reason === 'Conflict' && this.stdin) {
      // Another client holds stdin (or one that just left still does, for a moment):
      // try again, then watch the output only.
      this.conflicts += 1;
      if (this.conflicts > 3) {
        this.stdin = false;
        this.note('another client is attached to stdin: showing the output only');
      }
      // (The gateway closes this socket: its close must not attach again too.)
      this.ws.superseded = true;
      this.again(this.ws, this.stdin ? 300 : 0);
      return;
    }
    this.ended = true;
    let text;
    if (s.status === 'Success') {
      text = 'exited (0)';
    } else if (s.reason === 'NonZeroExitCode') {
      text = `exited (${s.details.causes[0].message})`;
    } else {
      text = `ended: ${s.message}`;
    }
    setState(text, 'ended');
    $('line').hidden = true;
    $('eof').hidden = true;
    this.note(text);
  }

  note(text) {
    this.term.write(`\r\n\x1b[2m[switchboard: ${text}]\x1b[22m\r\n`);
  }

  send(channel, bytes) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const frame = new Uint8Array(1 + bytes.length);
    frame[0] = channel;
    frame.set(bytes, 1);
    this.ws.send(frame);
  }

  sendSize() {
    if (!this.tty) return;
    this.send(RESIZE, encoder.encode(JSON.stringify({ Width: this.term.cols, Height: this.term.rows })));
  }

  closeStdin() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(new Uint8Array([CLOSE, STDIN]));
  }

  detach() {
    this.detached = true;
    if (this.ws) this.ws.close(1000);
    this.observer.disconnect();
    this.term.dispose();
    if (window.sbTerm === this.term) window.sbTerm = null;
  }
}

// The visible text of the terminal's screen, one string per row (for tests).
window.sbScreen = () => {
  const t = window.sbTerm;
  if (!t) return [];
  const b = t.buffer.active;
  const rows = [];
  for (let i = 0; i < t.rows; i++) {
    const line = b.getLine(b.viewportY + i);
    rows.push(line ? line.translateToString(true) : '');
  }
  return rows;
};

// ---- routes --------------------------------------------------------------------------

let routed = 0; // bumped at every route, so that a slow one that lost the race gives up

async function route() {
  const generation = ++routed;
  const m = location.hash.match(/^#\/attach\/(.+)$/);
  if (current) {
    current.detach();
    current = null;
  }
  $('line').hidden = true;
  $('eof').hidden = true;
  if (!m) {
    $('term-view').hidden = true;
    $('list-view').hidden = false;
    $('detach').hidden = true;
    $('title').textContent = '';
    setState('');
    refreshList();
    return;
  }
  const id = decodeURIComponent(m[1]);
  const r = await fetch('/api/v1/containers', { cache: 'no-store' });
  const c = r.ok ? (await r.json()).find((x) => x.id === id) : null;
  if (generation !== routed) return;
  if (!c) {
    location.hash = '';
    return;
  }
  $('list-view').hidden = true;
  $('term-view').hidden = false;
  $('detach').hidden = false;
  $('title').textContent = `${c.id}: ${c.command.join(' ')}`;
  setState('attaching');
  current = new Attachment(c.id, c.tty);
}

$('detach').onclick = () => { location.hash = ''; };
$('home').onclick = (e) => { e.preventDefault(); location.hash = ''; };
$('eof').onclick = () => current && current.closeStdin();
$('line').onsubmit = (e) => {
  e.preventDefault();
  if (!current) return;
  current.send(STDIN, encoder.encode($('line-text').value + '\n'));
  $('line-text').value = '';
};
window.addEventListener('hashchange', route);
setInterval(refreshList, 2000);
route();
