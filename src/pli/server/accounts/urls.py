from django.urls import path

from pli.server.accounts import custody_views, external_views, passkey_views, views

app_name = "accounts"

urlpatterns = [
    path("connexion/", views.login_view, name="login"),
    path("connexion/second-facteur/", views.second_factor_view, name="second-factor"),
    path("connexion/secours/", views.recovery_view, name="recovery"),
    path("deconnexion/", views.logout_view, name="logout"),
    path("inscription/", views.request_access_view, name="request-access"),
    path("activation/", views.activate_view, name="activate"),
    path("inscription/phrase-secrete/", views.enrol_passphrase_view, name="enrol-passphrase"),
    path("inscription/authentificateur/", views.enrol_totp_view, name="enrol-totp"),
    path("inscription/codes-de-secours/", views.enrol_recovery_view, name="enrol-recovery"),
    path("inscription/charte/", views.enrol_charter_view, name="enrol-charter"),
    path("charte/", views.charter_view, name="charter"),
    path("sessions/", views.sessions_view, name="sessions"),
    path("reauthentification/", views.reauth_view, name="reauth"),
    path("facteurs/", views.factors_view, name="factors"),
    path("facteurs/codes-de-secours/", views.recovery_codes_view, name="recovery-codes"),
    path("facteurs/authentificateur/", views.totp_change_view, name="totp-change"),
    path("facteurs/authentificateur/supprimer/", views.totp_remove_view, name="totp-remove"),
    # WebAuthn (passkeys and security keys): JSON steps of the ceremonies, and their pages.
    path(
        "connexion/cle-de-securite/options/",
        passkey_views.login_options_view,
        name="passkey-login-options",
    ),
    path("connexion/cle-de-securite/", passkey_views.login_verify_view, name="passkey-login"),
    path(
        "inscription/cle-de-securite/options/",
        passkey_views.enrol_options_view,
        name="passkey-enrol-options",
    ),
    path("inscription/cle-de-securite/", passkey_views.enrol_verify_view, name="passkey-enrol"),
    path("facteurs/cles-de-securite/ajouter/", passkey_views.add_view, name="passkey-add"),
    path(
        "facteurs/cles-de-securite/options/",
        passkey_views.add_options_view,
        name="passkey-add-options",
    ),
    path(
        "facteurs/cles-de-securite/enregistrer/",
        passkey_views.add_verify_view,
        name="passkey-add-verify",
    ),
    path(
        "facteurs/cles-de-securite/<int:credential_id>/supprimer/",
        passkey_views.remove_view,
        name="passkey-remove",
    ),
    # Professional card (REQ-AUTH-CARD): OpenID Connect (national identity provider) and
    # TLS client certificate; both answer 404 when not configured.
    path("connexion/oidc/", external_views.oidc_start_view, name="oidc-start"),
    path("connexion/oidc/retour/", external_views.oidc_callback_view, name="oidc-callback"),
    path("connexion/certificat/", external_views.certificate_login_view, name="certificate-login"),
    # Key custody: unlock the vault; the separate unlock passphrase (card and OIDC users).
    path("cle/deverrouiller/", custody_views.vault_unlock_view, name="vault-unlock"),
    path(
        "cle/phrase-de-deverrouillage/",
        custody_views.unlock_passphrase_view,
        name="unlock-passphrase",
    ),
]
