"""The admin web page at /admin: its routes are rows of idlakd.web.routes."""
