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
