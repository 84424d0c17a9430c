"""Web mail: the browser side of vault custody (DESIGN "Key custody", mode 2)."""
