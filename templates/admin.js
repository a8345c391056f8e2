// idlakd admin: the copy buttons and the try-it player. No inline script (the CSP forbids it).
"use strict";
(function () {
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // Copy a one-time password: the Clipboard API where allowed, else select-and-copy.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (!button) return;
    var input = document.getElementById(button.dataset.copy);
    var result = button.parentElement.querySelector(".copy-result");
    function done(ok) {
      if (result) result.textContent = ok ? "Copied." : "Select the text and copy it.";
    }
    function fallback() {
      input.focus();
      input.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      done(ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () { done(true); }, fallback);
    } else {
      fallback();
    }
  });

  var form = document.getElementById("tryit");
  if (!form) return;
  var audio = document.getElementById("tryit-audio");
  var status = document.getElementById("tryit-status");
  var button = form.querySelector('button[type="submit"]');
  var current = null;   // AbortController of the request in flight
  var objectUrl = null; // revoked when replaced

  function say(text) { status.textContent = text; }

  function setSource(url) {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = url;
    audio.src = url;
  }

  function startPlaying() {
    var played = audio.play();
    if (played && played.catch) played.catch(function () { say("Ready: press play."); });
  }

  function appendChunk(buffer, chunk) {
    return new Promise(function (resolve, reject) {
      buffer.addEventListener("updateend", resolve, { once: true });
      buffer.addEventListener("error", reject, { once: true });
      buffer.appendBuffer(chunk);
    });
  }

  // mp3 plays while it arrives (Media Source Extensions); the first sentence sounds early.
  async function playStreaming(response) {
    var source = new MediaSource();
    setSource(URL.createObjectURL(source));
    await new Promise(function (resolve) {
      source.addEventListener("sourceopen", resolve, { once: true });
    });
    var buffer = source.addSourceBuffer("audio/mpeg");
    var reader = response.body.getReader();
    var received = 0;
    for (;;) {
      var part = await reader.read();
      if (part.done) break;
      received += part.value.length;
      await appendChunk(buffer, part.value);
      if (received === part.value.length) startPlaying();
      say("Playing… " + Math.round(received / 1024) + " kB received");
    }
    if (source.readyState === "open") source.endOfStream();
    return received;
  }

  // wav and ogg cannot be fed to Media Source: play them once complete.
  async function playWhole(response) {
    var blob = await response.blob();
    setSource(URL.createObjectURL(blob));
    startPlaying();
    return blob.size;
  }

  // "Speak as I type": typed text goes to /admin/speech/stream as deltas (the session cookie
  // authenticates it); the PCM frames that come back are played in order with Web Audio.
  var live = document.getElementById("tryit-live");
  var textArea = form.elements.text;
  var socket = null;   // the open text socket
  var sent = "";       // what the socket has been sent of the text box
  var context = null;  // the AudioContext (made on the checkbox's click: autoplay rules)
  var rate = 0;        // PCM sample rate, from "started"
  var playAt = 0;      // when the next frame starts, in the context's time
  var playing = [];    // scheduled sources (stopped when the text is edited, not appended)
  var odd = null;      // a frame's last byte when it split a sample
  var heard = 0;       // seconds of audio received

  function stopPlaying() {
    playing.forEach(function (node) { node.stop(); });
    playing = [];
    playAt = 0;
  }

  function playPcm(data) {
    var bytes = new Uint8Array(data);
    if (odd !== null) {
      var joined = new Uint8Array(bytes.length + 1);
      joined[0] = odd;
      joined.set(bytes, 1);
      bytes = joined;
    }
    odd = bytes.length % 2 ? bytes[bytes.length - 1] : null;
    var samples = new Int16Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.length / 2));
    if (!samples.length) return;
    var buffer = context.createBuffer(1, samples.length, rate);
    var channel = buffer.getChannelData(0);
    for (var i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    var node = context.createBufferSource();
    node.buffer = buffer;
    node.connect(context.destination);
    playAt = Math.max(playAt, context.currentTime);
    node.start(playAt);
    playAt += buffer.duration;
    playing.push(node);
    node.addEventListener("ended", function () { playing.splice(playing.indexOf(node), 1); });
    heard += buffer.duration;
    say("Speaking as you type: " + heard.toFixed(1) + " s of audio received.");
  }

  function sendTyped() {
    if (!socket || socket.readyState !== WebSocket.OPEN || !rate) return;
    var text = textArea.value;
    if (text.startsWith(sent)) {
      if (text.length > sent.length) {
        socket.send(JSON.stringify({ type: "text", text: text.slice(sent.length) }));
      }
    } else {
      // An edit before the end: barge in, and say the text as it now reads.
      stopPlaying();
      socket.send(JSON.stringify({ type: "clear" }));
      if (text) socket.send(JSON.stringify({ type: "text", text: text }));
    }
    sent = text;
  }

  function openLive() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var opened = new WebSocket(scheme + location.host + "/admin/speech/stream");
    opened.binaryType = "arraybuffer";
    socket = opened;
    rate = 0;
    opened.addEventListener("open", function () {
      opened.send(JSON.stringify({ type: "start", voice_id: form.elements.voice_id.value,
                                   audio_format: "pcm" }));
    });
    opened.addEventListener("message", function (event) {
      if (typeof event.data !== "string") {
        playPcm(event.data);
        return;
      }
      var message = JSON.parse(event.data);
      if (message.type === "started") {
        rate = message.sample_rate;
        say("Listening: type, and each sentence is spoken once written.");
        sendTyped();
      } else if (message.type === "error") {
        say("Refused: " + message.message);
      }
    });
    opened.addEventListener("close", function () {
      if (socket === opened) socket = null;  // (idle): the next keystroke opens another
    });
  }

  if (live) {
    live.addEventListener("change", function () {
      if (live.checked) {
        context = context || new AudioContext();
        sent = textArea.value;  // speak what is typed from now on
        heard = 0;
        openLive();
      } else {
        if (socket) socket.close();
        socket = null;
        stopPlaying();
        say("");
      }
    });
    textArea.addEventListener("input", function () {
      if (!live.checked) return;
      if (socket) sendTyped();
      else openLive();
    });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (current) current.abort();
    var controller = new AbortController();
    current = controller;
    var format = form.elements.audio_format.value;
    var streaming = format === "mp3" && window.MediaSource &&
      MediaSource.isTypeSupported("audio/mpeg");
    var body = { voice_id: form.elements.voice_id.value, text: form.elements.text.value,
                 audio_format: format };
    if (!streaming) body.stream = false;  // a complete file with exact sizes
    button.disabled = true;
    say("Synthesising…");
    try {
      var response = await fetch("/admin/speech", {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify(body)
      });
      if (!response.ok) {
        var message = "HTTP " + response.status;
        try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
        say("Refused: " + message);
        return;
      }
      var size = streaming ? await playStreaming(response) : await playWhole(response);
      say("Done: " + Math.round(size / 1024) + " kB of " + format + ".");
    } catch (error) {
      if (error.name !== "AbortError") say("Synthesis failed: " + error.message);
    } finally {
      if (current === controller) current = null;
      button.disabled = false;
    }
  });
})();
