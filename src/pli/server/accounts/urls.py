from django.urls import path

from pli.server.accounts import views

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
]
