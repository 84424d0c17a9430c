"""Messaging: envelopes, mailboxes' copies, folders, deliveries (DESIGN "Shape of the code")."""
