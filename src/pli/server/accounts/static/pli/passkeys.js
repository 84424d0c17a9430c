/*
 * Pli: WebAuthn ceremonies in the browser (passkeys and security keys).
 *
 * A static file, because the Content-Security-Policy allows no inline script
 * (script-src 'self'). Each <form data-webauthn="register|authenticate"> names
 * two URLs: one returns the options (JSON, base64url fields), the other takes
 * the browser's answer. Binary fields travel as base64url strings (the JSON
 * forms of W3C WebAuthn Level 3, RegistrationResponseJSON and
 * AuthenticationResponseJSON, which py_webauthn reads).
 * The CSRF token comes from the form's csrfmiddlewaretoken input: the CSRF
 * cookie is HttpOnly. Messages are written by the server (translated) or
 * taken from the page's data-message elements (translated by Django too).
 */
(function () {
  "use strict";

  function bufferFromBase64url(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var binary = window.atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i += 1) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function base64urlFromBuffer(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i += 1) {
      binary += String.fromCharCode(bytes[i]);
    }
    return window.btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      var descriptor = { type: item.type, id: bufferFromBase64url(item.id) };
      if (item.transports) {
        descriptor.transports = item.transports;
      }
      return descriptor;
    });
  }

  // §5.4 PublicKeyCredentialCreationOptions from its JSON form.
  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = bufferFromBase64url(json.challenge);
    options.user = Object.assign({}, json.user, { id: bufferFromBase64url(json.user.id) });
    options.excludeCredentials = descriptors(json.excludeCredentials);
    return options;
  }

  // §5.5 PublicKeyCredentialRequestOptions from its JSON form.
  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = bufferFromBase64url(json.challenge);
    options.allowCredentials = descriptors(json.allowCredentials);
    return options;
  }

  // The PublicKeyCredential as JSON (RegistrationResponseJSON / AuthenticationResponseJSON).
  function credentialJSON(credential) {
    var response = credential.response;
    var json = {
      id: credential.id,
      rawId: base64urlFromBuffer(credential.rawId),
      type: credential.type,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: base64urlFromBuffer(response.clientDataJSON) }
    };
    if (credential.authenticatorAttachment) {
      json.authenticatorAttachment = credential.authenticatorAttachment;
    }
    if (response.attestationObject) {
      json.response.attestationObject = base64urlFromBuffer(response.attestationObject);
      if (typeof response.getTransports === "function") {
        json.response.transports = response.getTransports();
      }
    } else {
      json.response.authenticatorData = base64urlFromBuffer(response.authenticatorData);
      json.response.signature = base64urlFromBuffer(response.signature);
      if (response.userHandle) {
        json.response.userHandle = base64urlFromBuffer(response.userHandle);
      }
    }
    return json;
  }

  function Failure(message, redirect) {
    this.message = message;
    this.redirect = redirect;
  }

  function post(url, token, body, messages) {
    return window
      .fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": token
        },
        body: JSON.stringify(body)
      })
      .catch(function () {
        throw new Failure(messages.network);
      })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            throw new Failure(messages.failed);
          })
          .then(function (data) {
            if (!response.ok) {
              throw new Failure(data.message || messages.failed, data.redirect);
            }
            return data;
          });
      });
  }

  // What the browser's DOMException means for the user (WebAuthn §5.1.3 / §5.1.4 errors).
  function browserFailure(error, messages) {
    if (error instanceof Failure) {
      return error;
    }
    if (error && error.name === "NotAllowedError") {
      return new Failure(messages.cancelled);
    }
    if (error && error.name === "InvalidStateError") {
      return new Failure(messages.exists);
    }
    if (error && error.name === "SecurityError") {
      return new Failure(messages.security);
    }
    return new Failure(messages.failed);
  }

  function setUp(form) {
    var ceremony = form.getAttribute("data-webauthn");
    var button = form.querySelector("button[type=submit]");
    var alert = form.querySelector("[data-webauthn-error]");
    var status = form.querySelector("[data-webauthn-status]");
    var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    var messages = {};
    form.querySelectorAll("[data-message]").forEach(function (element) {
      messages[element.getAttribute("data-message")] = element.textContent.trim();
    });

    function say(message) {
      status.textContent = "";
      alert.textContent = message;
      alert.hidden = false;
    }

    form.hidden = false;
    if (!window.PublicKeyCredential || !navigator.credentials) {
      button.disabled = true;
      say(messages.unsupported);
      return;
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (button.disabled) {
        return;
      }
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      alert.hidden = true;
      alert.textContent = "";
      status.textContent = messages.working;
      var name = form.querySelector("input[name=name]");
      post(form.getAttribute("data-options-url"), token, {}, messages)
        .then(function (options) {
          if (ceremony === "register") {
            return navigator.credentials.create({ publicKey: creationOptions(options) });
          }
          return navigator.credentials.get({ publicKey: requestOptions(options) });
        })
        .then(function (credential) {
          var body = { credential: credentialJSON(credential) };
          if (ceremony === "register") {
            body.name = name ? name.value : "";
          }
          return post(form.getAttribute("data-verify-url"), token, body, messages);
        })
        .then(function (data) {
          status.textContent = "";
          window.location.assign(data.redirect);
        })
        .catch(function (error) {
          var failure = browserFailure(error, messages);
          button.disabled = false;
          button.removeAttribute("aria-busy");
          say(failure.message);
          if (failure.redirect) {
            window.location.assign(failure.redirect);
          }
        });
    });
  }

  document.querySelectorAll("form[data-webauthn]").forEach(setUp);
})();
