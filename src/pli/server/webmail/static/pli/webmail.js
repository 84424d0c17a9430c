/*
 * Pli web mail: progressive enhancement of the compose page.
 *
 * A static file: the Content-Security-Policy allows no inline script
 * (script-src 'self'). Without it the page works the same through plain form
 * submissions (the "Chercher" and suggestion buttons post the form back).
 * With it:
 *  - the directory search suggests correspondents as the sender types
 *    (name, profession, place), and a suggestion adds its address to "À"
 *    without reloading the page (so chosen attachments are kept);
 *  - the recipient check (who each address belongs to, and the first-time
 *    confirmation, REQ-VERIFY-RECIPIENT) follows the "À" field.
 * Both fragments are HTML rendered (and escaped) by the server. Keyboard:
 * Down arrow from the search field enters the suggestions, Up/Down move in
 * them, Escape goes back to the field.
 * A page sent back with errors has their summary focused, so that a screen
 * reader reads it first and the keyboard starts from it (its links lead to
 * the fields to correct).
 */
(function () {
  "use strict";

  var form = document.querySelector("form[data-compose]");
  if (!form) {
    return;
  }
  var recipients = form.querySelector("#id_recipients");
  var sender = form.querySelector("#id_sender");
  var search = form.querySelector("#directory-q");
  var suggestions = form.querySelector("#directory-suggestions");
  var status = form.querySelector("#directory-status");
  var check = form.querySelector("#recipient-check");
  var errors = document.getElementById("compose-errors");
  var searchUrl = form.getAttribute("data-search-url");
  var checkUrl = form.getAttribute("data-check-url");
  var searchTimer = null;
  var checkTimer = null;
  var searchRound = 0;
  var checkRound = 0;

  function get(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" }
    }).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.text();
    });
  }

  function buttons() {
    return Array.prototype.slice.call(suggestions.querySelectorAll("button[name=add_recipient]"));
  }

  function runSearch() {
    var query = search.value.trim();
    var round = ++searchRound;
    if (query.length < 2) {
      suggestions.innerHTML = "";
      status.textContent = "";
      return;
    }
    get(searchUrl + "?q=" + encodeURIComponent(query)).then(function (html) {
      if (round !== searchRound) {
        return;
      }
      suggestions.innerHTML = html;
      var root = suggestions.querySelector("[data-status]");
      status.textContent = root ? root.getAttribute("data-status") : "";
    }).catch(function () {
      status.textContent = "";
    });
  }

  function confirmedAddresses() {
    return Array.prototype.slice.call(check.querySelectorAll("input[name=confirm]:checked")).map(
      function (box) { return box.value; }
    );
  }

  function runCheck() {
    var round = ++checkRound;
    var query = "?de=" + encodeURIComponent(sender ? sender.value : "") +
      "&a=" + encodeURIComponent(recipients.value);
    confirmedAddresses().forEach(function (address) {
      query += "&ok=" + encodeURIComponent(address);
    });
    get(checkUrl + query).then(function (html) {
      if (round === checkRound) {
        check.innerHTML = html;
      }
    }).catch(function () { /* the server checks again when sending */ });
  }

  function scheduleCheck() {
    window.clearTimeout(checkTimer);
    checkTimer = window.setTimeout(runCheck, 350);
  }

  function addRecipient(address) {
    var current = recipients.value.split(/[,;\s]+/).filter(function (part) { return part; });
    var known = current.some(function (part) { return part.toLowerCase() === address.toLowerCase(); });
    if (!known) {
      current.push(address);
    }
    recipients.value = current.join(", ");
    suggestions.innerHTML = "";
    search.value = "";
    status.textContent = (form.getAttribute("data-added-text") || "") + " " + address;
    runCheck();
    recipients.focus();
  }

  search.addEventListener("input", function () {
    window.clearTimeout(searchTimer);
    searchTimer = window.setTimeout(runSearch, 250);
  });

  search.addEventListener("keydown", function (event) {
    if (event.key === "ArrowDown") {
      var list = buttons();
      if (list.length) {
        event.preventDefault();
        list[0].focus();
      }
    } else if (event.key === "Escape") {
      suggestions.innerHTML = "";
      status.textContent = "";
    }
  });

  suggestions.addEventListener("keydown", function (event) {
    var list = buttons();
    var at = list.indexOf(document.activeElement);
    if (at < 0) {
      return;
    }
    if (event.key === "ArrowDown" && at + 1 < list.length) {
      event.preventDefault();
      list[at + 1].focus();
    } else if (event.key === "ArrowUp") {
      event.preventDefault();
      (at > 0 ? list[at - 1] : search).focus();
    } else if (event.key === "Escape") {
      event.preventDefault();
      suggestions.innerHTML = "";
      search.focus();
    }
  });

  suggestions.addEventListener("click", function (event) {
    var button = event.target.closest("button[name=add_recipient]");
    if (button) {
      event.preventDefault();
      addRecipient(button.value);
    }
  });

  form.addEventListener("submit", function (event) {
    // Enter in a text field submits with the form's first button ("Chercher"):
    // with the script, that searches in place instead of reloading the page.
    var submitter = event.submitter;
    if (submitter && submitter.name === "action" && submitter.value === "search") {
      event.preventDefault();
      window.clearTimeout(searchTimer);
      runSearch();
    }
  });

  if (errors) {
    errors.focus();
  }

  recipients.addEventListener("input", scheduleCheck);
  recipients.addEventListener("change", runCheck);
  if (sender) {
    sender.addEventListener("change", runCheck);
  }
}());
