// The login page (its own script: the page's CSP allows no inline code).
// The form posts by itself without JS; with JS it posts through fetch, whose same-origin Origin
// header the server's cross-origin check accepts (a form navigation under Referrer-Policy:
// no-referrer sends "Origin: null").
const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const input = document.getElementById("token");
if (new URLSearchParams(window.location.search).has("error")) error.hidden = false;
input.focus();
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  error.hidden = true;
  try {
    const response = await fetch("/login", {
      method: "POST", credentials: "same-origin", body: new URLSearchParams({ token: input.value }),
    });
    const landed = new URL(response.url, window.location.href);
    if (!response.ok || landed.pathname === "/login") {
      error.textContent = response.ok ? "That token is not the right one; try again."
        : `The server refused the login (HTTP ${response.status}).`;
      error.hidden = false;
      input.select();
    } else {
      window.location.assign("/");
    }
  } catch {
    error.textContent = "The server cannot be reached.";
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});
