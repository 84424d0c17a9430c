"""Django's SQLite backend with one queue for the writers of a database file (``base``)."""
