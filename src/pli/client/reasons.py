"""What the pure packages' error codes mean, in the command line's language.

``pli.crypto``, ``pli.mime`` and ``pli.identifiers`` import nothing of the
client and speak to programs: a stable ``code`` and a technical English
``detail`` ("no valid path to a trust anchor: …"). The ``pli`` commands speak
to health professionals, French first (:mod:`pli.client.i18n`), so an error
raised *inside* one of those packages is shown by its code's meaning here; the
technical detail stays for ``--debug``, whose traceback carries it. An error
the client raised itself (the SDK's ``NotARecipient`` naming the mailbox…)
already holds a translated detail and keeps it.
"""

from __future__ import annotations

from pli.client.i18n import N_, translate

__all__ = ["TEXTS", "raised_by_a_pure_package", "reason"]

_PURE_PACKAGES = ("pli.crypto", "pli.identifiers", "pli.mime")

#: One sentence per code, French (the msgid), lower case as after ``pli: error: <code>:``.
TEXTS: dict[str, str] = {
    # pli.crypto
    "malformed_envelope": N_("le message chiffré est illisible (ce n'est pas une enveloppe CMS)"),
    "unsupported_algorithm": N_("le message utilise un algorithme que Pli n'accepte pas"),
    "not_a_recipient": N_(
        "aucune de vos clés n'ouvre ce message : il n'a pas été chiffré pour vous"
    ),
    "envelope_corrupted": N_("le message chiffré est endommagé et ne peut pas être lu"),
    "signature_error": N_("la signature du message ne peut pas être vérifiée"),
    "signature_missing": N_("le message n'est pas signé"),
    "signature_invalid": N_(
        "la signature ne correspond pas au contenu : le message a pu être modifié"
    ),
    "signer_certificate_mismatch": N_("le certificat joint ne correspond pas à la signature"),
    "signer_untrusted": N_(
        "le certificat n'est pas émis par une autorité de confiance (voyez --trust)"
    ),
    "signer_expired": N_("le certificat n'est pas ou plus valide à cette date"),
    "signer_revoked": N_("le certificat a été révoqué"),
    "revocation_unknown": N_(
        "la révocation du certificat ne peut pas être vérifiée : liste de révocation absente"
        " ou périmée (voyez --crl)"
    ),
    "signer_usage_invalid": N_("le certificat n'est pas destiné à signer des messages"),
    "sender_mismatch": N_(
        "le signataire n'est ni l'expéditeur ni le rédacteur indiqués dans le message"
    ),
    "wrong_passphrase": N_("la phrase secrète n'ouvre pas ce fichier de clé"),
    "keystore_corrupted": N_("le fichier de clé est endommagé, ou n'est pas un fichier de clé"),
    "weak_key": N_("la clé est trop faible pour Pli"),
    "invalid_certificate_request": N_("la demande de certificat n'est pas valide"),
    "invalid_certificate": N_("le certificat est illisible ou n'est pas valide"),
    "ca_error": N_("l'autorité de certification refuse l'opération"),
    "unknown_certificate": N_("ce certificat n'est pas connu de l'autorité de certification"),
    "blob_corrupted": N_(
        "une pièce jointe volumineuse est endommagée ou incomplète : elle n'a pas été enregistrée"
    ),
    # pli.mime
    "bad_address": N_("une adresse n'est pas une adresse de messagerie valide"),
    "bad_charset": N_("le texte est dans un jeu de caractères que Pli ne lit pas"),
    "bad_disposition": N_("l'accusé de lecture porte une mention invalide"),
    "bad_header": N_("un en-tête contient un caractère interdit (par exemple un saut de ligne)"),
    "bad_message_id": N_("un identifiant de message (Message-ID) est mal formé"),
    "bad_patient_id": N_("l'identifiant du patient n'est ni un NIR/INS ni un NISS valide"),
    "duplicate_header": N_("un en-tête du message est en double"),
    "header_too_long": N_("un en-tête du message est trop long"),
    "malformed_message": N_("le message déchiffré est mal formé"),
    "malformed_notification": N_("l'accusé de lecture est mal formé"),
    "message_too_large": N_("le message est trop volumineux"),
    "missing_header": N_("il manque un en-tête obligatoire au message"),
    "no_recipient": N_("le message n'a aucun destinataire"),
    "not_a_notification": N_("ce message n'est pas un accusé de lecture"),
    "not_sealed": N_("le message n'est pas chiffré"),
    "too_deep": N_("le message imbrique trop de parties"),
    "too_many_headers": N_("le message a trop d'en-têtes"),
    "too_many_parts": N_("le message a trop de parties"),
    "unsupported_external_body": N_("une pièce externe est d'un type que Pli ne lit pas"),
    "attachment_type_not_allowed": N_("une pièce jointe n'est pas d'un type accepté"),
    "attachment_content_mismatch": N_(
        "le contenu d'une pièce jointe n'est pas du type que son nom ou son type annonce"
    ),
    # pli.identifiers
    "empty": N_("aucun identifiant n'est donné"),
    "bad_characters": N_("l'identifiant ne doit contenir que des chiffres"),
    "wrong_length": N_("l'identifiant n'a pas le bon nombre de caractères"),
    "bad_check_digit": N_(
        "la clé de contrôle de l'identifiant ne correspond pas (faute de frappe ?)"
    ),
    "bad_structure": N_("l'identifiant n'a pas la forme attendue"),
    "unknown_kind": N_("ce type d'identifiant est inconnu"),
}


def raised_by_a_pure_package(error: BaseException) -> bool:
    """Whether ``error`` was raised in ``pli.crypto``, ``pli.mime`` or ``pli.identifiers``."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    module = str(frame.tb_frame.f_globals.get("__name__", ""))
    return any(module == name or module.startswith(name + ".") for name in _PURE_PACKAGES)


def reason(language: str | None, code: str, detail: str, error: BaseException) -> str:
    """What a person reads after ``<code>:``: the code's meaning, or the client's own detail."""
    text = TEXTS.get(code)
    if text is None or not raised_by_a_pure_package(error):
        return detail
    return translate(language, text)
