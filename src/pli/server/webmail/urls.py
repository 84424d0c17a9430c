"""Web mail URLs, mounted at ``messagerie/`` (French paths, as the rest of the site)."""

from django.urls import path

from pli.server.webmail import views

app_name = "webmail"

urlpatterns = [
    path("", views.folder_view, name="folder"),
    path("nouveau/", views.compose_view, name="compose"),
    path("annuaire/", views.directory_view, name="directory"),
    path("destinataires/", views.recipients_view, name="recipients"),
    path("message/<str:message_id>/", views.message_view, name="message"),
    path("message/<str:message_id>/repondre/", views.reply_view, name="reply"),
    path("message/<str:message_id>/transferer/", views.forward_view, name="forward"),
    path("message/<str:message_id>/deplacer/", views.move_view, name="move"),
    path("message/<str:message_id>/supprimer/", views.delete_view, name="delete"),
    path(
        "message/<str:message_id>/pieces-jointes/<int:index>/",
        views.attachment_view,
        name="attachment",
    ),
    path(
        "message/<str:message_id>/pieces-volumineuses/<int:index>/",
        views.large_attachment_view,
        name="large_attachment",
    ),
]
