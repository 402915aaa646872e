"use strict";
// One round: deal, show each image in turn, post each answer, then show the score.
// The server never says an image's class before the round is over; this script only knows ids.

const $ = (id) => document.getElementById(id);
let round = null;      // {round, images: [id, ...]}
let position = 0;      // index of the image on screen
let shownAt = 0;       // when it finished loading, for the response time

function setState(state) {
  document.body.dataset.state = state;  // "loading", "question", "sending", "result", "error"
  $("real").disabled = $("generated").disabled = state !== "question";
}

async function api(method, path, body) {
  const init = {method, credentials: "same-origin", headers: {}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function imageUrl(id) { return `/img/${encodeURIComponent(id)}`; }

async function startRound() {
  setState("loading");
  $("result").hidden = true;
  round = await api("POST", "/api/round", {});
  position = 0;
  // Fetch them all now: every image is the same size, so the order of arrival says nothing.
  for (const id of round.images) new Image().src = imageUrl(id);
  $("question").hidden = false;
  show();
}

function show() {
  const total = round.images.length;
  $("progress").max = total;
  $("progress").value = position;
  $("progress-text").textContent = `Image ${position + 1} of ${total}`;
  setState("loading");
  const image = $("image");
  image.onload = () => { shownAt = performance.now(); setState("question"); };
  image.onerror = () => fail(new Error("the image did not load; reload the page"));
  image.src = imageUrl(round.images[position]);
}

async function answer(choice) {
  if (document.body.dataset.state !== "question") return;
  setState("sending");
  const ms = Math.max(0, Math.round(performance.now() - shownAt));
  await api("POST", "/api/answer", {image: round.images[position], answer: choice, ms});
  position += 1;
  if (position < round.images.length) show();
  else await finish();
}

async function finish() {
  const result = await api("GET", `/api/round/${encodeURIComponent(round.round)}`);
  $("progress").value = result.total;
  $("progress-text").textContent = `Round done: ${result.total} of ${result.total}`;
  $("question").hidden = true;
  $("score").textContent = `You got ${result.right} of ${result.total} right`;
  const wrong = result.images.filter((image) => image.answer !== image.truth);
  $("wrong-title").textContent = wrong.length ? "The ones you got wrong:" : "None wrong.";
  $("wrong").replaceChildren(...wrong.map((image) => {
    const item = document.createElement("li");
    const picture = document.createElement("img");
    picture.src = imageUrl(image.id);
    picture.alt = `${image.truth} image`;
    item.append(picture, `${image.truth}, you said ${image.answer}`);
    item.dataset.truth = image.truth;
    return item;
  }));
  $("result").hidden = false;
  setState("result");
  $("next").focus();
}

function fail(error) {
  setState("error");
  $("error").textContent = `Something went wrong: ${error.message}`;
  $("error").hidden = false;
}

const run = (action) => () => action().catch(fail);
$("real").addEventListener("click", run(() => answer("real")));
$("generated").addEventListener("click", run(() => answer("generated")));
$("next").addEventListener("click", run(startRound));
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const state = document.body.dataset.state;
  if (state === "question" && (key === "r" || key === "arrowleft")) run(() => answer("real"))();
  else if (state === "question" && (key === "g" || key === "arrowright")) {
    run(() => answer("generated"))();
  } else if (state === "result" && (key === "enter" || key === "n")) {
    event.preventDefault();  // Enter would also "click" the focused button: one new round only
    run(startRound)();
  }
});
run(startRound)();
