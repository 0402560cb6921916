// The live job page: follows the job's event stream and updates the server-rendered
// page in place (bars, counts, thumbnails in stage and slot order, shortfalls, status).
// No framework, no build step. The stream starts after the event the page reflects
// (`?after=<seq>`); a dropped connection resumes by itself with Last-Event-ID.
'use strict';

(function () {
  const main = document.getElementById('job');
  if (!main) return;
  const jobId = main.dataset.jobId;
  const api = '/v1/jobs/' + encodeURIComponent(jobId);
  const FINAL = ['completed', 'partial', 'failed', 'cancelled'];
  const byId = (id) => document.getElementById(id);

  function setBar(id, delivered, total) {
    const bar = byId('progress-' + id);
    const count = byId('count-' + id);
    if (!bar || !count) return;
    // Counts only grow: an event that arrives after a newer one changes nothing.
    const now = Math.max(Number(bar.value), delivered);
    bar.max = total;
    bar.value = now;
    bar.textContent = now + '/' + total;
    count.textContent = now + '/' + total;
  }

  function addThumbnail(stage, slot) {
    const list = byId('thumbs-' + stage);
    if (!list || list.querySelector('li[data-slot="' + slot + '"]')) return;
    const src = api + '/images/' + stage + '/' + slot;
    const item = document.createElement('li');
    item.dataset.slot = String(slot);
    const link = document.createElement('a');
    link.href = src;
    const img = document.createElement('img');
    img.src = src;
    img.alt = 'stage ' + (stage + 1) + ', image ' + (slot + 1);
    img.width = 96;
    img.height = 96;
    link.appendChild(img);
    item.appendChild(link);
    // Slot order: before the first thumbnail of a higher slot.
    const after = Array.prototype.find.call(list.children, (li) => Number(li.dataset.slot) > slot);
    list.insertBefore(item, after || null);
  }

  function bump(id, by) {
    const el = byId(id);
    if (el) el.textContent = String(Number(el.textContent) + by);
  }

  function countClass(errorClass) {
    const list = byId('by-class');
    let item = list.querySelector('li[data-class="' + CSS.escape(errorClass) + '"]');
    if (!item) {
      item = document.createElement('li');
      item.dataset.class = errorClass;
      item.append(errorClass + ' ');
      const n = document.createElement('span');
      n.className = 'n';
      n.textContent = '0';
      item.appendChild(n);
      list.appendChild(item);
    }
    const n = item.querySelector('.n');
    n.textContent = String(Number(n.textContent) + 1);
  }

  function setStatus(status) {
    main.dataset.status = status;
    byId('status').textContent = status;
    if (FINAL.indexOf(status) >= 0) {
      byId('live').textContent = '';
      byId('cancel').disabled = true;
    }
  }

  const cancel = byId('cancel');
  const cancelResult = byId('cancel-result');
  cancel.addEventListener('click', async () => {
    if (!window.confirm('Cancel job ' + jobId + '? Images delivered so far are kept.')) return;
    cancel.disabled = true;
    cancelResult.textContent = 'cancelling…';
    try {
      const answer = await fetch(api, { method: 'DELETE', headers: { 'x-imagegen-page': '1' }, credentials: 'same-origin' });
      const body = await answer.json().catch(() => ({}));
      if (answer.ok) cancelResult.textContent = body.outcome === 'cancelled' ? 'cancelled' : 'cancel requested: in-flight images finish first';
      else {
        cancelResult.textContent = (body.error && body.error.message) || 'cancel failed (' + answer.status + ')';
        if (answer.status !== 409) cancel.disabled = false;
      }
    } catch (error) {
      cancelResult.textContent = 'cancel failed: ' + error.message;
      cancel.disabled = false;
    }
  });

  if (FINAL.indexOf(main.dataset.status) >= 0 || typeof EventSource !== 'function') return;

  const live = byId('live');
  /** The latest failure message per `stage/errorClass`, for the line of a stage that ends short. */
  const lastMessage = new Map();
  const events = new EventSource(api + '/events?after=' + encodeURIComponent(main.dataset.seq), { withCredentials: true });
  const on = (type, handle) => events.addEventListener(type, (message) => {
    live.textContent = 'live';
    handle(JSON.parse(message.data));
  });
  on('slot:delivered', (e) => {
    addThumbnail(e.stage, e.slot);
    setBar(String(e.stage), e.stageProgress.delivered, e.stageProgress.total);
    setBar('total', e.progress.delivered, e.progress.total);
    if (e.attempt > 1) bump('retries-delivered', 1);
  });
  on('attempt:failed', (e) => {
    lastMessage.set(e.stage + '/' + e.errorClass, e.message);
    bump('failed', 1);
    countClass(e.errorClass);
    if (e.willRetry) bump('retries', 1);
  });
  on('stage:completed', (e) => setBar(String(e.stage), e.delivered, e.quantity));
  on('stage:short', (e) => {
    setBar(String(e.stage), e.delivered, e.quantity);
    const text = 'short by ' + (e.quantity - e.delivered) + ': ' + e.reason + (e.errorClass ? ' (' + e.errorClass + ')' : '');
    const known = e.errorClass ? lastMessage.get(e.stage + '/' + e.errorClass) : undefined;
    const line = byId('short-' + e.stage);
    line.textContent = text + (known ? ' \u2014 ' + known : '');
    // The failure that explains it came before this page was loaded: the job's summary has it.
    if (e.errorClass && !known) {
      fetch(api, { credentials: 'same-origin' })
        .then((answer) => (answer.ok ? answer.json() : null))
        .then((job) => {
          const detail = job && job.stages && job.stages[e.stage] && job.stages[e.stage].shortfall && job.stages[e.stage].shortfall.detail;
          if (detail) line.textContent = text + ' \u2014 ' + detail;
        })
        .catch(() => undefined);
    }
  });
  on('job:finished', (e) => {
    events.close();
    setStatus(e.status);
  });
  events.addEventListener('error', () => {
    // EventSource reconnects by itself, resuming after the last event it got.
    if (events.readyState !== EventSource.CLOSED) live.textContent = 'reconnecting…';
  });
})();
