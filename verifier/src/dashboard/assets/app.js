// Cadence dashboard: fetches the verifier's JSON API (same origin, session cookie) and writes
// it into the page. Every value goes in as text (textContent, setAttribute on fixed attribute
// names), never as markup, so stored data cannot become script. The chart is an SVG drawn
// here; nothing is loaded from anywhere else.
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const page = document.body.dataset.page;
  const content = document.getElementById('content');
  const status = document.getElementById('status');

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(c);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function time(ms) {
    if (ms === null || ms === undefined) return '–';
    return new Date(ms).toISOString().replace('.000Z', 'Z');
  }

  function num(v, digits) {
    return v === null || v === undefined ? '–' : Number(v).toFixed(digits);
  }

  function say(text) {
    status.textContent = text;
    status.className = 'status';
  }

  function fail(text) {
    status.textContent = text;
    status.className = 'status error';
    console.error('dashboard: ' + text);
  }

  async function getJson(path) {
    const r = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (r.status === 401) {
      window.location.assign('/dashboard/login');
      throw new Error('signed out');
    }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
    return body;
  }

  function table(headers, rows, emptyText) {
    if (rows.length === 0) return el('p', { class: 'empty', text: emptyText });
    const head = el('tr', {}, headers.map((h) => el('th', { text: h })));
    return el('table', {}, [el('thead', {}, [head]), el('tbody', {}, rows)]);
  }

  function cell(text, cls) {
    return el('td', cls ? { class: cls, text: text } : { text: text });
  }

  function userLink(deviceId, label) {
    const a = el('a', { text: label });
    a.setAttribute('href', '/dashboard/user?device=' + encodeURIComponent(deviceId));
    return el('td', {}, [a]);
  }

  function stateCell(state) {
    const s = state || 'unknown';
    return cell(s.replace(/_/g, ' '), 'state-' + s);
  }

  function evidenceList(evidence) {
    const dl = el('dl', { class: 'evidence' });
    if (evidence && typeof evidence === 'object') {
      for (const [k, v] of Object.entries(evidence)) {
        const shown = typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2)
          : typeof v === 'object' ? JSON.stringify(v) : String(v);
        dl.appendChild(el('dt', { text: k }));
        dl.appendChild(el('dd', { text: shown }));
      }
    }
    return el('td', {}, [dl]);
  }

  function alertRows(alerts) {
    return alerts.map((a) => el('tr', {}, [
      cell(String(a.id), 'num'),
      cell(time(a.created_ms), 'time'),
      cell(a.kind),
      userLink(a.device_id, a.os_user + '@' + a.hostname),
      cell(num(a.trust, 1), 'num'),
      evidenceList(a.evidence),
    ]));
  }

  const ALERT_HEADERS = ['#', 'when', 'kind', 'user@host', 'trust', 'evidence'];

  async function overview() {
    const [devices, users] = await Promise.all([
      getJson('/dashboard/api/devices'),
      getJson('/dashboard/api/users'),
    ]);
    content.appendChild(el('h2', { text: 'Users and their current trust' }));
    content.appendChild(table(
      ['user@host', 'status', 'trust', 'last score', 'as of', 'alerts'],
      users.users.map((u) => el('tr', {}, [
        userLink(u.device_id, u.os_user + '@' + u.hostname),
        stateCell(u.status),
        cell(u.trust === null ? 'no score yet' : num(u.trust, 1), 'num' + (u.trust !== null && u.trust < 50 ? ' trust-low' : '')),
        cell(num(u.score, 2), 'num'),
        cell(time(u.trust_ms), 'time'),
        cell(String(u.alerts), 'num'),
      ])),
      'No device has enrolled yet.'));
    content.appendChild(el('h2', { text: 'Devices and their monitoring state' }));
    content.appendChild(table(
      ['device', 'user', 'host', 'status', 'enrolled', 'last seen'],
      devices.devices.map((d) => el('tr', {}, [
        userLink(d.device_id, d.device_id),
        cell(d.os_user),
        cell(d.hostname),
        stateCell(d.status),
        cell(time(d.enrolled_ms), 'time'),
        cell(time(d.last_seen_ms), 'time'),
      ])),
      'No device has enrolled yet.'));
    say(devices.devices.length + ' device(s).');
  }

  async function alertsPage() {
    const body = await getJson('/dashboard/api/alerts');
    content.appendChild(table(ALERT_HEADERS, alertRows(body.alerts), 'No alerts.'));
    say(body.alerts.length + ' alert(s), newest first.');
  }

  async function consentPage() {
    const body = await getJson('/dashboard/api/consent');
    content.appendChild(table(
      ['when', 'decision', 'user', 'device', 'notice (SHA-256)'],
      body.consent.map((c) => el('tr', {}, [
        cell(time(c.at_ms), 'time'),
        cell(c.decision),
        cell(c.os_user),
        userLink(c.device_id, c.device_id),
        cell(c.notice_sha256.slice(0, 16) + '…', 'mono'),
      ])),
      'No consent records yet.'));
    say(body.consent.length + ' consent record(s), newest first.');
  }

  // Score (left axis, its own range) and trust (right axis, 0 to 100) per window, oldest on
  // the left; the lockout as a dashed line; windows that raised an alert as red dots. The
  // x axis is the window's place in order, not the clock: the chart is about whether the
  // rhythm matches, and must not become a picture of when someone worked: the API gives no
  // per-window time, only the first and last window's, for the axis labels. No activity
  // counts are shown anywhere (identity assurance only).
  function chart(windows, lockout, firstMs, lastMs) {
    const W = 960, H = 320, L = 56, R = 56, T = 16, B = 40;
    const root = svg('svg', { class: 'chart', id: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    root.appendChild(svg('title', {}, 'Score and trust per window'));
    const n = windows.length;
    const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
    const scores = windows.map((w) => w.score).filter((v) => v !== null);
    let lo = Math.min(...scores, 0), hi = Math.max(...scores, 1);
    if (hi - lo < 1e-9) hi = lo + 1;
    const ys = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
    const yt = (v) => T + ((100 - v) * (H - T - B)) / 100;
    for (let k = 0; k <= 4; k++) {
      const y = T + (k * (H - T - B)) / 4;
      root.appendChild(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y, y2: y }));
      root.appendChild(svg('text', { class: 'label', x: L - 6, y: y + 4, 'text-anchor': 'end' }, num(hi - (k * (hi - lo)) / 4, 1)));
      root.appendChild(svg('text', { class: 'label', x: W - R + 6, y: y + 4 }, String(100 - k * 25)));
    }
    root.appendChild(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
    root.appendChild(svg('line', { class: 'axis', x1: W - R, x2: W - R, y1: T, y2: H - B }));
    root.appendChild(svg('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    if (typeof lockout === 'number') {
      root.appendChild(svg('line', { class: 'lockout', x1: L, x2: W - R, y1: yt(lockout), y2: yt(lockout) }));
    }
    for (const [name, key, y] of [['score', 'score', ys], ['trust', 'trust', yt]]) {
      let d = '', points = 0, open = false;
      windows.forEach((w, i) => {
        const v = w[key];
        if (v === null || v === undefined) { open = false; return; }
        d += (open ? ' L' : ' M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1);
        open = true;
        points++;
      });
      root.appendChild(svg('path', { class: name, d: d.trim() || 'M0 0', 'data-points': points }));
    }
    windows.forEach((w, i) => {
      if (w.alert) root.appendChild(svg('circle', { class: 'alert-mark', cx: x(i), cy: yt(w.trust === null ? 0 : w.trust), r: 4 }));
    });
    if (n > 0) {
      root.appendChild(svg('text', { class: 'label', x: L, y: H - B + 16 }, time(firstMs)));
      root.appendChild(svg('text', { class: 'label', x: W - R, y: H - B + 16, 'text-anchor': 'end' }, time(lastMs)));
    }
    root.appendChild(svg('text', { class: 'label', x: L, y: H - 6 }, 'score (left, blue) · trust (right, green, 0–100) · dashed: lockout · red: alert'));
    return el('div', { class: 'chart-box' }, [root]);
  }

  async function userPage() {
    const device = new URLSearchParams(window.location.search).get('device');
    if (!device) throw new Error('no device given: open a user from the devices list');
    const q = 'device=' + encodeURIComponent(device);
    const [timeline, alerts, consent] = await Promise.all([
      getJson('/dashboard/api/timeline?' + q),
      getJson('/dashboard/api/alerts?' + q),
      getJson('/dashboard/api/consent?' + q),
    ]);
    const d = timeline.device;
    document.getElementById('title').textContent = d.os_user + '@' + d.hostname;
    const windows = timeline.windows;
    const current = windows.slice().reverse().find((w) => w.trust !== null);
    content.appendChild(el('p', { class: 'mono', text: 'device ' + d.device_id + ' · status ' + d.status.replace(/_/g, ' ') + ' · current trust ' + (current ? num(current.trust, 1) : 'none yet (no window scored)') }));
    content.appendChild(el('h2', { text: 'Score and trust, window by window' }));
    content.appendChild(chart(windows, timeline.lockout, timeline.first_ms, timeline.last_ms));
    content.appendChild(el('h2', { text: 'Alerts' }));
    content.appendChild(table(ALERT_HEADERS, alertRows(alerts.alerts), 'No alerts for this user.'));
    content.appendChild(el('h2', { text: 'Consent records' }));
    content.appendChild(table(
      ['when', 'decision', 'notice (SHA-256)'],
      consent.consent.map((c) => el('tr', {}, [cell(time(c.at_ms), 'time'), cell(c.decision), cell(c.notice_sha256.slice(0, 16) + '…', 'mono')])),
      'No consent records for this user.'));
    say('Latest windows shown; ' + alerts.alerts.length + ' alert(s).');
  }

  const pages = { overview: overview, alerts: alertsPage, consent: consentPage, user: userPage };
  const run = pages[page];
  if (!run) {
    fail('unknown page');
    return;
  }
  run().then(
    () => { document.body.dataset.ready = 'true'; },
    (e) => { fail(e.message); document.body.dataset.ready = 'error'; },
  );
})();
