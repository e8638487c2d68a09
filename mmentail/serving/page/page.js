// Two posts in, one :predict request out, the answer drawn as bars.
// Images are read with FileReader and sent as {"b64": ...}, as any REST client sends them;
// the server checks them, so its error (naming the field) is what the page shows.
"use strict";

(() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const predictUrl = meta("predict-url");
  const labels = JSON.parse(meta("labels"));
  const sides = [1, 2];
  const form = document.getElementById("pair");
  const button = document.getElementById("submit");
  const buttonText = button.textContent;
  const errorBox = document.getElementById("error");
  const answer = document.getElementById("answer");
  const reading = {};  // side -> Promise of {name, b64} for the image chosen last

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  function readFile(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error(`Could not read ${file.name}: ${reader.error}`));
      reader.readAsDataURL(file);
    });
  }

  function chooseImage(side, file) {
    const preview = document.getElementById(`preview_${side}`);
    const img = preview.querySelector("img");
    const note = preview.querySelector(".no-image");
    img.hidden = true;
    img.removeAttribute("src");
    note.hidden = false;
    if (!file) {
      delete reading[side];
      note.textContent = "No image yet";
      return;
    }
    note.textContent = `Reading ${file.name}…`;
    const read = readFile(file).then((dataUrl) => {
      if (reading[side] !== read) return { name: file.name, b64: "" };  // replaced meanwhile
      img.onload = () => { img.hidden = false; note.hidden = true; };
      img.onerror = () => { note.textContent = `${file.name}: no preview (not an image?)`; };
      img.src = dataUrl;
      const comma = dataUrl.indexOf(",");
      return { name: file.name, b64: comma < 0 ? "" : dataUrl.slice(comma + 1) };
    });
    read.catch((error) => { note.textContent = error.message; });
    reading[side] = read;
  }

  function watchPost(side) {
    const post = document.getElementById(`post_${side}`);
    const input = document.getElementById(`image_${side}`);
    input.addEventListener("change", () => chooseImage(side, input.files[0]));
    post.addEventListener("dragover", (event) => {
      event.preventDefault();
      post.classList.add("dragging");
    });
    post.addEventListener("dragleave", (event) => {
      if (!post.contains(event.relatedTarget)) post.classList.remove("dragging");
    });
    post.addEventListener("drop", (event) => {
      event.preventDefault();
      post.classList.remove("dragging");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) return;
      try { input.files = files; } catch (error) { /* the preview still shows the file */ }
      chooseImage(side, files[0]);
    });
  }

  function missingParts() {
    const missing = [];
    for (const side of sides) {
      if (!document.getElementById(`text_${side}`).value.trim()) {
        missing.push(`Post ${side} needs a text.`);
      }
      if (!reading[side]) missing.push(`Post ${side} needs an image.`);
    }
    return missing;
  }

  async function predict(instance) {
    let response;
    try {
      response = await fetch(predictUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ instances: [instance] }),
      });
    } catch (error) {
      throw new Error(`Could not reach the server (${error.message}). Is mmentail-serve running?`);
    }
    let body = null;
    try { body = JSON.parse(await response.text()); } catch (error) { body = null; }
    if (!response.ok) {
      const reason = body && body.error ? body.error : response.statusText || "no reason given";
      throw new Error(`The server refused the pair (${response.status}): ${reason}`);
    }
    const prediction = body && Array.isArray(body.predictions) && body.predictions[0];
    if (!prediction || !Array.isArray(prediction.probabilities)) {
      throw new Error("The server's answer has no prediction in it.");
    }
    return prediction;
  }

  function barRow(name, index, probability, chosen) {
    const percent = 100 * probability;
    const row = document.createElement("div");
    row.className = chosen ? "bar-row chosen" : "bar-row";
    row.dataset.label = name;
    const title = document.createElement("span");
    title.className = "bar-name";
    title.id = `bar-name-${index}`;
    title.textContent = name;
    const track = document.createElement("div");
    track.className = "bar-track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-labelledby", title.id);
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    track.setAttribute("aria-valuenow", percent.toFixed(1));
    track.setAttribute("aria-valuetext", `${percent.toFixed(1)}%`);
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${percent.toFixed(2)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${percent.toFixed(1)}%`;
    row.append(title, track, value);
    return row;
  }

  function showAnswer(prediction) {
    document.getElementById("label").textContent = prediction.label;
    document.getElementById("bars").replaceChildren(...labels.map((name, i) =>
      barRow(name, i, prediction.probabilities[i], name === prediction.label)));
    answer.hidden = false;
  }

  async function submit(event) {
    event.preventDefault();
    clearError();
    answer.hidden = true;
    const missing = missingParts();
    if (missing.length) {
      showError(missing.join("\n"));
      return;
    }
    button.disabled = true;
    button.textContent = "Comparing…";
    form.setAttribute("aria-busy", "true");
    try {
      const [image1, image2] = await Promise.all(sides.map((side) => reading[side]));
      showAnswer(await predict({
        text_1: document.getElementById("text_1").value, image_1: { b64: image1.b64 },
        text_2: document.getElementById("text_2").value, image_2: { b64: image2.b64 },
      }));
    } catch (error) {
      showError(error.message);
    } finally {
      button.disabled = false;
      button.textContent = buttonText;
      form.removeAttribute("aria-busy");
    }
  }

  // A file dropped beside the posts must not make the browser leave the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }
  sides.forEach(watchPost);
  form.addEventListener("submit", submit);
})();
