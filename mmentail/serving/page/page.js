// Two posts in, one :predict request out, the answer drawn as bars; "Why this answer?"
// sends the same pair to :explain and shades its words and image cells by their scores.
// Images are read with FileReader and sent as {"b64": ...}, as any REST client sends them;
// the server checks them, so its error (naming the field) is what the page shows.
"use strict";

(() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const predictUrl = meta("predict-url");
  const explainUrl = meta("explain-url");
  const labels = JSON.parse(meta("labels"));
  const sides = [1, 2];
  const form = document.getElementById("pair");
  const button = document.getElementById("submit");
  const buttonText = button.textContent;
  const errorBox = document.getElementById("error");
  const answer = document.getElementById("answer");
  const whyButton = document.getElementById("why");
  const whyView = document.getElementById("why-view");
  const reading = {};  // side -> Promise of {name, b64} for the image chosen last
  let answered = null;  // {instance, images: [data URL, data URL]} of the pair answered last

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

  async function post(url, instance) {
    let response;
    try {
      response = await fetch(url, {
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
    return body;
  }

  async function predict(instance) {
    const body = await post(predictUrl, instance);
    const prediction = body && Array.isArray(body.predictions) && body.predictions[0];
    if (!prediction || !Array.isArray(prediction.probabilities)) {
      throw new Error("The server's answer has no prediction in it.");
    }
    return prediction;
  }

  function barRow(name, index, probability, chosen, idPrefix = "bar-name") {
    const percent = 100 * probability;
    const row = document.createElement("div");
    row.className = chosen ? "bar-row chosen" : "bar-row";
    row.dataset.label = name;
    const title = document.createElement("span");
    title.className = "bar-name";
    title.id = `${idPrefix}-${index}`;
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

  // Scores are drops in p(label): linear up to a thousandth, logarithmic beyond, as in
  // mmentail-explain's picture, so the small drops of a saturated probability still show.
  const LINEAR_UP_TO = 0.001;
  const SUPPORTS = [178, 24, 43];
  const AGAINST = [33, 102, 172];
  const IMAGE_HEIGHT = 240;

  function shade(score, largest) {
    const squash = (value) => Math.log10(1 + Math.abs(value) / LINEAR_UP_TO);
    const t = Math.min(1, squash(score) / squash(largest));
    const colour = score >= 0 ? SUPPORTS : AGAINST;
    return { rgb: colour.map((c) => Math.round(255 + t * (c - 255))), colour, t };
  }

  function signed(value, digits = 3) {
    return `${value >= 0 ? "+" : "\u2212"}${Math.abs(value).toFixed(digits)}`;
  }

  function showWords(side, words, largest, label) {
    const holder = document.getElementById(`why-text-${side}`);
    holder.replaceChildren();
    words.forEach(({ word, score }, i) => {
      if (i) holder.append(" ");
      const span = document.createElement("span");
      const { rgb, t } = shade(score, largest);
      span.className = "word";
      span.textContent = word;
      span.dataset.score = String(score);
      span.style.backgroundColor = `rgb(${rgb.join(", ")})`;
      if (t > 0.6) span.classList.add("dark");
      span.title = `without it, p(${label}) changes by ${signed(-score)}`;
      holder.append(span);
    });
    if (!words.length) holder.textContent = "(this model reads no text)";
  }

  function showCells(side, dataUrl, cells, largest, label) {
    const holder = document.getElementById(`why-image-${side}`);
    holder.replaceChildren();
    if (!cells) {
      holder.textContent = "(this model reads no image)";
      return;
    }
    const frame = document.createElement("div");
    frame.className = "cell-frame";
    const img = document.createElement("img");
    img.onload = () => {  // as large as the column allows, at most IMAGE_HEIGHT high
      const scale = Math.min(holder.clientWidth / img.naturalWidth,
                             IMAGE_HEIGHT / img.naturalHeight);
      img.style.width = `${Math.floor(img.naturalWidth * scale)}px`;
    };
    img.src = dataUrl;
    img.alt = `Post ${side}'s image under its heat map`;
    const grid = document.createElement("div");
    grid.className = "cells";
    grid.style.gridTemplateColumns = `repeat(${cells[0].length}, 1fr)`;
    grid.style.gridTemplateRows = `repeat(${cells.length}, 1fr)`;
    for (const row of cells) {
      for (const score of row) {
        const cell = document.createElement("div");
        const { colour, t } = shade(score, largest);
        cell.className = "cell";
        cell.dataset.score = String(score);
        cell.style.backgroundColor = `rgba(${colour.join(", ")}, ${(0.85 * t).toFixed(3)})`;
        cell.title = `grey here, p(${label}) changes by ${signed(-score)}`;
        if (Math.abs(score) >= 0.005) cell.textContent = signed(score, 2);
        grid.append(cell);
      }
    }
    frame.append(img, grid);
    holder.append(frame);
  }

  function showExplanation(why, images) {
    const label = why.label;
    for (const node of whyView.querySelectorAll(".why-label")) node.textContent = label;
    const scores = [
      ...Object.values(why.words).flat().map((w) => w.score),
      ...Object.values(why.cells).flat(2),
    ];
    const largest = Math.max(0.01, ...scores.map(Math.abs));
    const names = { text_1: "text 1", text_2: "text 2", texts: "both texts",
                    image_1: "image 1", image_2: "image 2", images: "both images" };
    document.getElementById("why-parts").replaceChildren(
      barRow(`the whole pair`, 0, why.label_probability, true, "why-part"),
      ...Object.entries(why.modalities).map(([part, { probability }], i) =>
        barRow(`without ${names[part]}`, i + 1, probability, false, "why-part")));
    for (const side of sides) {
      showWords(side, why.words[`text_${side}`] || [], largest, label);
      showCells(side, images[side - 1], why.cells[`image_${side}`], largest, label);
    }
    whyView.hidden = false;
  }

  async function explain() {
    if (!answered) return;
    clearError();
    whyButton.disabled = true;
    whyButton.textContent = "Taking the pair apart…";
    try {
      const body = await post(explainUrl, answered.instance);
      const why = body && Array.isArray(body.explanations) && body.explanations[0];
      if (!why || !why.modalities) throw new Error("The server's answer has no explanation.");
      showExplanation(why, answered.images);
    } catch (error) {
      showError(error.message);
    } finally {
      whyButton.disabled = false;
      whyButton.textContent = "Why this answer?";
    }
  }

  async function submit(event) {
    event.preventDefault();
    clearError();
    answer.hidden = true;
    whyView.hidden = true;
    answered = null;
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
      const instance = {
        text_1: document.getElementById("text_1").value, image_1: { b64: image1.b64 },
        text_2: document.getElementById("text_2").value, image_2: { b64: image2.b64 },
      };
      showAnswer(await predict(instance));
      answered = { instance, images: sides.map(
        (side) => document.querySelector(`#preview_${side} img`).src) };
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
  whyButton.addEventListener("click", explain);
})();
