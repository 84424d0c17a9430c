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
 * Both fragments are HTML rendered (and escaped) by the server. The search
 * field becomes an ARIA combobox with a listbox popup (WAI-ARIA Authoring
 * Practices, "editable combobox with list autocomplete"): the focus stays in
 * the field, Down and Up move the active option (aria-activedescendant, which
 * screen readers announce), Enter takes it, Escape closes the list (and, when
 * it is closed, empties the field); a click takes an option too.
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

  var active = -1;

  // Without the script the field is a plain search box and the suggestions are
  // buttons posting the form back; with it, a combobox controlling a listbox.
  search.setAttribute("role", "combobox");
  search.setAttribute("aria-autocomplete", "list");
  search.setAttribute("aria-expanded", "false");
  search.setAttribute("aria-controls", "directory-listbox");

  function options() {
    return Array.prototype.slice.call(suggestions.querySelectorAll("[role=option]"));
  }

  function setActive(index) {
    var list = options();
    active = index >= 0 && index < list.length ? index : -1;
    list.forEach(function (option, at) {
      option.setAttribute("aria-selected", at === active ? "true" : "false");
    });
    if (active >= 0) {
      search.setAttribute("aria-activedescendant", list[active].id);
      list[active].scrollIntoView({ block: "nearest" });
    } else {
      search.removeAttribute("aria-activedescendant");
    }
  }

  function show(html) {
    suggestions.innerHTML = html;
    setActive(-1);
    search.setAttribute("aria-expanded", options().length ? "true" : "false");
  }

  function closeList() {
    searchRound++;  // an answer still on its way must not reopen it
    show("");
    status.textContent = "";
  }

  function runSearch() {
    var query = search.value.trim();
    var round = ++searchRound;
    if (query.length < 2) {
      show("");
      status.textContent = "";
      return;
    }
    get(searchUrl + "?liste=1&q=" + encodeURIComponent(query)).then(function (html) {
      if (round !== searchRound) {
        return;
      }
      show(html);
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
        // A box ticked while this check was on its way stays ticked: the answer was
        // computed from the ticks of before (REQ-VERIFY-RECIPIENT, the person's choice).
        var ticked = confirmedAddresses();
        check.innerHTML = html;
        Array.prototype.forEach.call(check.querySelectorAll("input[name=confirm]"), function (box) {
          if (ticked.indexOf(box.value) !== -1) {
            box.checked = true;
          }
        });
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
    closeList();
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
    var list = options();
    if (event.key === "ArrowDown") {
      if (list.length) {
        event.preventDefault();
        setActive(active < 0 ? 0 : Math.min(active + 1, list.length - 1));
      }
    } else if (event.key === "ArrowUp") {
      if (list.length) {
        event.preventDefault();
        // Up from the first option leaves the list for the field's own text.
        setActive(active - 1);
      }
    } else if (event.key === "Enter") {
      if (active >= 0) {
        event.preventDefault();  // takes the option; never submits the form
        addRecipient(list[active].getAttribute("data-address"));
      }
    } else if (event.key === "Escape") {
      event.preventDefault();
      if (list.length || suggestions.innerHTML) {
        closeList();
      } else {
        search.value = "";
      }
    }
  });

  search.addEventListener("blur", function () {
    setActive(-1);
  });

  // The pointer takes an option without moving the focus out of the field first.
  suggestions.addEventListener("mousedown", function (event) {
    if (event.target.closest("[role=option]")) {
      event.preventDefault();
    }
  });

  suggestions.addEventListener("click", function (event) {
    var option = event.target.closest("[role=option]");
    var button = event.target.closest("button[name=add_recipient]");
    if (option || button) {
      event.preventDefault();
      addRecipient(option ? option.getAttribute("data-address") : button.value);
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

  if (suggestions.querySelector("button[name=add_recipient]")) {
    runSearch();  // a page sent back with its suggestions: the same, as a listbox
  }

  if (errors) {
    errors.focus();
  }

  recipients.addEventListener("input", scheduleCheck);
  recipients.addEventListener("change", runCheck);
  if (sender) {
    sender.addEventListener("change", runCheck);
  }
}());
