/* django-tasks-q dashboard: fetch api/dashboard/ every few seconds and redraw, without reloading the page.
 *
 * Everything shown is built with DOM calls and textContent (never innerHTML), so task names, arguments and
 * tracebacks are shown as text, whatever they contain. Charts are plain SVG: no library, no CDN.
 * Actions ask first (window.confirm), then POST with the page's CSRF token; the server checks the permission again.
 */
(function () {
  "use strict";
  var root = document.getElementById("tasksq-dashboard");
  if (!root) { return; }
  var api = root.dataset.api;
  var refreshMs = Math.max(1, Number(root.dataset.refresh) || 2) * 1000;
  var canAct = root.dataset.canAct === "1";
  var canPurge = root.dataset.canPurge === "1";
  var csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function when(iso) { return iso ? new Date(iso).toLocaleTimeString() : "-"; }

  function fill(tableId, rows, emptyText, columns) {
    var body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren();
    if (!rows.length) {
      body.appendChild(el("tr", {}, [el("td", {colspan: String(columns), text: emptyText})]));
    }
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function say(text, isError) {
    var box = document.getElementById("tq-message");
    box.textContent = text;
    box.className = isError ? "tq-error" : "";
  }

  function post(path, fields) {
    var form = new FormData();
    Object.keys(fields || {}).forEach(function (key) { form.append(key, fields[key]); });
    return fetch(api + path, {method: "POST", body: form, credentials: "same-origin",
                              headers: {"X-CSRFToken": csrf, "Accept": "application/json"}})
      .then(function (response) {
        return response.json().catch(function () { return {error: "HTTP " + response.status}; })
          .then(function (data) {
            if (!response.ok) { throw new Error(data.error || ("HTTP " + response.status)); }
            return data;
          });
      });
  }

  /* Ask before acting: every button changes what the workers do. A "no" leaves the button as it was. */
  function confirmed(question, what) {
    return window.confirm(question) ? null : Promise.reject(new Error("not " + what));
  }

  function button(label, cls, onClick) {
    var node = el("button", {type: "button", "class": "button " + cls, text: label});
    node.addEventListener("click", function () {
      node.disabled = true;
      onClick().then(function (text) { say(text, false); load(); },
                     function (error) { say(error.message, true); node.disabled = false; });
    });
    return node;
  }

  function taskLabel(task) {
    return el("span", {}, [el("strong", {text: task.name || "(unnamed)"}), el("br"),
                           el("code", {text: task.task_id})]);
  }

  function drawWorkers(workers) {
    fill("tq-workers", workers.map(function (w) {
      return el("tr", {"data-hostname": w.hostname}, [
        el("td", {text: w.hostname}),
        el("td", {"class": w.online ? "tq-online" : "tq-offline", text: w.online ? "online" : "offline"}),
        el("td", {text: w.pool + " \u00d7" + w.concurrency}),
        el("td", {text: (w.queues || []).join(", ")}),
        el("td", {text: String(w.active)}),
        el("td", {text: String(w.processed)}),
        el("td", {text: String(w.failed)}),
        el("td", {text: when(w.last_heartbeat)})]);
    }), "No worker has reported yet.", 8);
  }

  function drawQueues(queues) {
    fill("tq-queues", queues.map(function (q) {
      var actions = el("td");
      if (canPurge && q.messages) {
        actions.appendChild(button("Purge", "tq-purge", function () {
          return confirmed("Delete all " + q.messages + " waiting messages in " + q.name + "?", "purged") ||
            post("queues/" + encodeURIComponent(q.name) + "/purge/", {confirm: q.name})
            .then(function (d) { return "purged " + d.purged + " message(s) from " + d.queue; });
        }));
      }
      return el("tr", {"data-queue": q.name}, [
        el("td", {text: q.name}),
        q.messages === null ? el("td", {"class": "tq-error", text: q.error || "unknown"})
                            : el("td", {text: String(q.messages)}),
        el("td", {text: (q.consumers || []).join(", ") || "none"}),
        actions]);
    }), "No queue is configured.", 4);
  }

  function drawRunning(tasks) {
    fill("tq-running", tasks.map(function (t) {
      var progress = el("td");
      if (t.progress) {
        progress.appendChild(el("progress", {max: String(t.progress.total), value: String(t.progress.current),
                                             "data-task-id": t.task_id}));
        progress.appendChild(document.createTextNode(" " + t.progress.current + " / " + t.progress.total +
                                                     " (" + t.progress.percent + "%)"));
      } else {
        progress.textContent = t.state;
      }
      var actions = el("td");
      if (canAct) {
        actions.appendChild(button("Revoke", "tq-revoke", function () {
          return confirmed("Revoke " + (t.name || t.task_id) + " (" + t.task_id + ") and stop it if it is running?",
                           "revoked") ||
            post("tasks/" + encodeURIComponent(t.task_id) + "/revoke/", {terminate: "1"})
            .then(function () { return "revoked " + t.task_id; });
        }));
      }
      return el("tr", {"data-task-id": t.task_id}, [el("td", {}, [taskLabel(t)]), el("td", {text: t.worker}),
                                                     el("td", {text: when(t.date_started)}), progress, actions]);
    }), "Nothing is running.", 5);
  }

  var openTracebacks = {};  // task ids whose traceback is unfolded: kept open across refreshes

  function drawFailures(tasks) {
    fill("tq-failures", tasks.map(function (t) {
      var error = t.result && t.result.exc_type
        ? t.result.exc_type + ": " + [].concat(t.result.exc_message).join(", ") : "";
      var details = el("details", {}, [el("summary", {text: error || "traceback"}),
                                       el("pre", {text: t.traceback || "(no traceback recorded)"})]);
      details.open = Boolean(openTracebacks[t.task_id]);
      details.addEventListener("toggle", function () { openTracebacks[t.task_id] = details.open; });
      var actions = el("td");
      if (canAct) {
        actions.appendChild(button("Retry", "tq-retry", function () {
          return confirmed("Send " + (t.name || t.task_id) + " again with the same arguments, as a new task?",
                           "sent again") ||
            post("tasks/" + encodeURIComponent(t.task_id) + "/retry/")
            .then(function (d) { return "sent " + d.name + " again as " + d.task_id; });
        }));
      }
      return el("tr", {"data-task-id": t.task_id}, [el("td", {}, [taskLabel(t)]), el("td", {text: t.worker}),
                                                     el("td", {text: when(t.date_done)}), el("td", {}, [details]),
                                                     actions]);
    }), "No failures recorded.", 5);
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  /* Stacked bars: succeeded (green) under failed (red), one per bucket; a <title> on each gives the counts. */
  function drawChart(id, buckets) {
    var box = document.getElementById(id);
    var width = 600, height = 140, top = 12, bottom = 18;
    var max = 1, done = 0, failed = 0;
    buckets.forEach(function (b) {
      max = Math.max(max, b.succeeded + b.failed);
      done += b.succeeded + b.failed;
      failed += b.failed;
    });
    var chart = svg("svg", {viewBox: "0 0 " + width + " " + height, preserveAspectRatio: "none",
                            role: "img", "aria-label": id});
    var slot = width / Math.max(1, buckets.length);
    var scale = (height - top - bottom) / max;
    buckets.forEach(function (b, i) {
      var x = i * slot + slot * 0.1, w = Math.max(1, slot * 0.8);
      var okHeight = b.succeeded * scale, failHeight = b.failed * scale;
      var base = height - bottom;
      var group = svg("g", {"class": "bucket"});
      group.appendChild(svg("title", {}, new Date(b.start).toLocaleString() + ": " + b.succeeded +
                                          " succeeded, " + b.failed + " failed"));
      if (okHeight) { group.appendChild(svg("rect", {"class": "ok", x: x, y: base - okHeight, width: w, height: okHeight})); }
      if (failHeight) {
        group.appendChild(svg("rect", {"class": "failed", x: x, y: base - okHeight - failHeight, width: w,
                                       height: failHeight}));
      }
      chart.appendChild(group);
    });
    chart.appendChild(svg("line", {"class": "axis", x1: 0, x2: width, y1: height - bottom, y2: height - bottom}));
    chart.appendChild(svg("text", {x: 2, y: 10}, "max " + max));
    if (buckets.length) {
      chart.appendChild(svg("text", {x: 2, y: height - 4}, new Date(buckets[0].start).toLocaleTimeString()));
      chart.appendChild(svg("text", {x: width - 2, y: height - 4, "text-anchor": "end"}, "now"));
    }
    var rate = done ? (100 * failed / done).toFixed(1) : "0.0";
    box.replaceChildren(chart, el("div", {"class": "tq-legend",
                                          text: done + " finished, " + failed + " failed (" + rate + "% failure rate)"}));
  }

  var loading = false;
  function load() {
    if (loading) { return; }
    loading = true;
    fetch(api + "dashboard/", {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("could not refresh: HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        drawWorkers(data.workers);
        drawQueues(data.queues);
        drawRunning(data.running);
        drawFailures(data.failures);
        drawChart("tq-chart-hour", data.hour);
        drawChart("tq-chart-day", data.day);
        document.getElementById("tq-updated").textContent = "Updated " + when(data.now);
      })
      .catch(function (error) { say(error.message, true); })
      .then(function () { loading = false; });
  }

  load();
  window.setInterval(function () { if (!document.hidden) { load(); } }, refreshMs);
}());
