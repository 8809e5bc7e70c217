// Glue between the unmodified IPython 2.x kernel.js and the browser tests.
//
// The tests drive kernel.js only through its own API (start, execute, object_info, complete,
// send_input_reply, interrupt, restart) and read what its callbacks delivered from
// window.results. Besides the callbacks, the glue does two things the notebook page does:
// it loads the widget modules kernel.js needs (IPython.WidgetManager) through require.js,
// and it reconnects after an unclean close the way notificationarea.js does.
(function () {
    "use strict";

    // notificationarea.js waits this long before kernel.start_channels().
    var NOTEBOOK_RECONNECT_DELAY_MS = 5000;

    var results = {
        kernel_id: null,
        events: [],       // kernel.js events, in order: {name, t, early?}
        sockets: [],      // every websocket kernel.js opened: url, channel, frames, close
        requests: {}      // msg_id -> what the callbacks of that request received
    };
    window.results = results;

    var harness = {ready: false, load_error: null, kernel: null};
    window.harness = harness;

    var now = function () { return Date.now(); };

    var plain = function (msg) {
        return {
            msg_type: msg.header.msg_type,
            msg_id: msg.header.msg_id,
            parent_msg_id: msg.parent_header ? msg.parent_header.msg_id : null,
            content: msg.content
        };
    };

    // kernel.js takes its WebSocket constructor from this.WebSocket; this one is the browser's,
    // with listeners that record what the browser saw (kernel.js's own handlers stay in place).
    var RecordingWebSocket = function (url) {
        var ws = new WebSocket(url);
        var entry = {
            url: url,
            channel: url.split("/").pop(),
            created: now(),
            opened: null,
            frames: 0,
            close: null
        };
        results.sockets.push(entry);
        ws.addEventListener("open", function () { entry.opened = now(); });
        ws.addEventListener("message", function () { entry.frames += 1; });
        ws.addEventListener("close", function (evt) {
            entry.close = {code: evt.code, reason: evt.reason, wasClean: evt.wasClean, t: now()};
        });
        return ws;
    };

    var events = IPython.events;
    var record_event = function (name) {
        return function (evt, data) {
            var entry = {name: name, t: now()};
            if (data && data.early !== undefined) {
                entry.early = data.early;
            }
            results.events.push(entry);
        };
    };
    $.each(["status_started", "status_restarting", "status_autorestarting", "status_dead",
            "status_interrupting", "websocket_closed"], function (i, name) {
        $([events]).on(name + ".Kernel", record_event(name));
    });

    // Same reaction as notificationarea.js: a late unclean close reconnects after 5 s; an early
    // one (the sockets never opened) shows a dialog whose "Reconnect" is harness.reconnect().
    $([events]).on("websocket_closed.Kernel", function (evt, data) {
        if (!data.early) {
            setTimeout(function () { data.kernel.start_channels(); }, NOTEBOOK_RECONNECT_DELAY_MS);
        }
    });

    $([events]).on("status_started.Kernel", function (evt, data) {
        results.kernel_id = data.kernel.kernel_id;
    });

    var new_record = function (kind) {
        return {kind: kind, reply: null, outputs: [], statuses: [], input_requests: [],
                clear_output: 0, idle: false};
    };

    var track = function (record, msg_id) {
        record.msg_id = msg_id;
        results.requests[msg_id] = record;
        return msg_id;
    };

    harness.start = function (kernel_service_url) {
        var kernel = new IPython.Kernel(kernel_service_url || "/api/kernels");
        kernel.WebSocket = RecordingWebSocket;
        harness.kernel = kernel;
        kernel.start();
    };

    harness.reconnect = function () {
        harness.kernel.start_channels();
    };

    harness.started_count = function () {
        return results.events.filter(function (e) { return e.name === "status_started"; }).length;
    };

    // Callbacks shaped like codecell.js's; options as the notebook passes them.
    harness.execute = function (code, options) {
        var record = new_record("execute");
        var callbacks = {
            shell: {reply: function (msg) { record.reply = plain(msg); }},
            iopub: {
                output: function (msg) { record.outputs.push(plain(msg)); },
                clear_output: function () { record.clear_output += 1; },
                status: function (msg) {
                    record.statuses.push(msg.content.execution_state);
                    if (msg.content.execution_state === "idle") {
                        record.idle = true;
                    }
                }
            },
            input: function (msg) { record.input_requests.push(plain(msg)); }
        };
        var opts = $.extend({silent: false, store_history: true}, options || {});
        return track(record, harness.kernel.execute(code, callbacks, opts));
    };

    harness.object_info = function (objname) {
        var record = new_record("object_info");
        return track(record, harness.kernel.object_info(objname, function (msg) {
            record.reply = plain(msg);
        }));
    };

    harness.complete = function (line, cursor_pos) {
        var record = new_record("complete");
        return track(record, harness.kernel.complete(line, cursor_pos, function (msg) {
            record.reply = plain(msg);
        }));
    };

    harness.kernel_info = function () {
        var record = new_record("kernel_info");
        return track(record, harness.kernel.kernel_info(function (msg) {
            record.reply = plain(msg);
        }));
    };

    harness.finished = function (msg_id) {
        var record = results.requests[msg_id];
        if (!record || record.reply === null) {
            return false;
        }
        return record.kind !== "execute" || record.idle;
    };

    // Text of the stream messages of one request, concatenated in arrival order (v4: `data`).
    harness.stream_text = function (msg_id, name) {
        return results.requests[msg_id].outputs.filter(function (o) {
            return o.msg_type === "stream" && o.content.name === (name || "stdout");
        }).map(function (o) { return o.content.data; }).join("");
    };

    // The notebook loads the widget modules before it creates a Kernel (main.js requires
    // widgets/js/init); kernel.js's constructor needs IPython.WidgetManager from them.
    require(["widgets/js/init"], function () {
        harness.ready = true;
    }, function (err) {
        harness.load_error = String(err);
    });
}());
