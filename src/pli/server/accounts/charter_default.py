"""The first version of the professional charter (REQ-INFO-PRO).

The operator edits it, as new versions, in the console.
"""

TEXT_FR = """\
Cette messagerie sécurisée de santé est réservée aux professionnels inscrits dans un annuaire \
national ou local d'identification. Votre compte est personnel : ne confiez à personne votre \
phrase secrète, votre second facteur ni vos codes de secours.

Vous n'échangez que les données strictement nécessaires à la prise en charge de la personne \
concernée, avec des professionnels qui participent à cette prise en charge, et dans le respect \
du secret professionnel.

L'objet d'un message ne contient aucune donnée de santé ni aucun identifiant du patient : il \
voyage sans chiffrement de bout en bout dans certaines passerelles.

Vous informez les personnes concernées de l'utilisation de la messagerie et respectez leur \
opposition au partage de leurs données.

Chaque action (connexion, envoi, lecture, téléchargement) est tracée pendant un an. Une boîte \
inutilisée pendant un an est supprimée, ainsi que son contenu, après un avertissement.

En cas de perte d'un facteur d'authentification ou de soupçon de compromission de votre compte, \
prévenez sans délai l'opérateur de la messagerie.
"""

TEXT_EN = """\
This secure health messaging service is reserved for professionals listed in a national or \
local identification directory. Your account is personal: never share your passphrase, your \
second factor or your recovery codes.

Exchange only the data strictly needed for the care of the person concerned, with professionals \
taking part in that care, and within professional secrecy.

A message subject never contains health data or a patient identifier: it travels without \
end-to-end encryption through some gateways.

Inform the persons concerned that you use this service and respect their objection to the \
sharing of their data.

Every action (login, send, read, download) is logged for one year. A mailbox unused for a year \
is deleted with its content, after a warning.

If you lose an authentication factor or suspect your account is compromised, tell the operator \
at once.
"""
